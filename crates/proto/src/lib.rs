//! Protocol definitions for SofaMQ.
//!
//! * [`v2`]: the Apache RocketMQ 5 gRPC protocol (`apache.rocketmq.v2`), the
//!   subset served by SofaMQ brokers, wire compatible with the official clients.
//! * [`namesrv`]: SofaMQ's internal name server service (`sofamq.namesrv.v1`).
//! * [`admin`]: SofaMQ's broker administration service (`sofamq.admin.v1`).
//! * [`codec`]: the gRPC codec of every service (prost's, with a send request's message
//!   list sized before it is decoded).
//! * [`codes`]: what each `v2::Code` means to a client (retry class, "may be
//!   stored"), the one table broker and SDK share.
//!
//! Well-known types (`Timestamp`, `Duration`) come from [`prost_types`], which
//! is re-exported for convenience.

pub use prost;
pub use prost_types;
pub use tonic;

pub mod codec;
pub mod codes;

// Generated code refers across packages with `super::` paths, so the modules
// mirror the proto package hierarchy; the short aliases below are the public API.

/// Generated code for the `apache.*` proto packages.
pub mod apache {
    /// Generated code for `apache.rocketmq.*`.
    pub mod rocketmq {
        /// Apache RocketMQ 5 gRPC protocol, package `apache.rocketmq.v2`.
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::needless_pass_by_value,
            clippy::large_futures,
            missing_docs,
            rust_2018_idioms,
            unreachable_pub
        )]
        pub mod v2 {
            tonic::include_proto!("apache.rocketmq.v2");
        }
    }
}

/// Generated code for the `sofamq.*` proto packages.
pub mod sofamq {
    /// Generated code for `sofamq.admin.*`.
    pub mod admin {
        /// SofaMQ broker administration service, package `sofamq.admin.v1`.
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::needless_pass_by_value,
            clippy::large_futures,
            missing_docs,
            rust_2018_idioms,
            unreachable_pub
        )]
        pub mod v1 {
            tonic::include_proto!("sofamq.admin.v1");
        }
    }

    /// Generated code for `sofamq.namesrv.*`.
    pub mod namesrv {
        /// SofaMQ name server service, package `sofamq.namesrv.v1`.
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::needless_pass_by_value,
            clippy::large_futures,
            missing_docs,
            rust_2018_idioms,
            unreachable_pub
        )]
        pub mod v1 {
            tonic::include_proto!("sofamq.namesrv.v1");

            /// `TopicRoute.perm` bit: the topic's queues are readable.
            pub const PERM_READ: u32 = 4;
            /// `TopicRoute.perm` bit: the topic's queues are writable.
            pub const PERM_WRITE: u32 = 2;
            /// `TopicRoute.perm` value for a readable and writable topic.
            pub const PERM_READ_WRITE: u32 = PERM_READ | PERM_WRITE;
        }
    }
}

/// Apache RocketMQ 5 gRPC protocol (`apache.rocketmq.v2`).
pub use apache::rocketmq::v2;
/// SofaMQ broker administration service (`sofamq.admin.v1`).
pub use sofamq::admin::v1 as admin;
/// SofaMQ name server service (`sofamq.namesrv.v1`).
pub use sofamq::namesrv::v1 as namesrv;

/// Encoded `google.protobuf.FileDescriptorSet` of every compiled proto file
/// (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

#[cfg(test)]
mod tests {
    use super::v2;
    use prost::Message as _;

    #[test]
    fn code_values_match_upstream() {
        assert_eq!(v2::Code::Ok as i32, 20000);
        assert_eq!(v2::Code::BadRequest as i32, 40000);
        assert_eq!(v2::Code::IllegalTopic as i32, 40002);
        assert_eq!(v2::Code::InvalidReceiptHandle as i32, 40013);
        assert_eq!(v2::Code::Unauthorized as i32, 40100);
        assert_eq!(v2::Code::Forbidden as i32, 40300);
        assert_eq!(v2::Code::MessageNotFound as i32, 40401);
        assert_eq!(v2::Code::TopicNotFound as i32, 40402);
        assert_eq!(v2::Code::MessageBodyTooLarge as i32, 41301);
        assert_eq!(v2::Code::MessageBodyEmpty as i32, 41302);
        assert_eq!(v2::Code::TooManyRequests as i32, 42900);
        assert_eq!(v2::Code::MessagePropertiesTooLarge as i32, 43101);
        assert_eq!(v2::Code::InternalError as i32, 50000);
        assert_eq!(v2::Code::HaNotAvailable as i32, 50002);
        assert_eq!(v2::Code::MasterPersistenceTimeout as i32, 50401);
        assert_eq!(v2::Code::SlavePersistenceTimeout as i32, 50402);
    }

    #[test]
    fn status_code_is_field_1() {
        let status = v2::Status {
            code: v2::Code::Ok as i32,
            message: String::new(),
        };
        // tag (1 << 3 | varint) = 0x08, then 20000 as a varint.
        assert_eq!(status.encode_to_vec(), vec![0x08, 0xa0, 0x9c, 0x01]);
        let msg_only = v2::Status {
            code: 0,
            message: "x".into(),
        };
        // field 2, length-delimited: 0x12.
        assert_eq!(msg_only.encode_to_vec(), vec![0x12, 0x01, b'x']);
    }

    #[test]
    fn send_message_request_round_trip() {
        let req = v2::SendMessageRequest {
            messages: vec![v2::Message {
                topic: Some(v2::Resource {
                    resource_namespace: String::new(),
                    name: "TopicA".into(),
                }),
                user_properties: [("k".to_string(), "v".to_string())].into(),
                system_properties: Some(v2::SystemProperties {
                    tag: Some("TagA".into()),
                    keys: vec!["key1".into()],
                    message_id: "01ABC".into(),
                    body_digest: Some(v2::Digest {
                        r#type: v2::DigestType::Md5 as i32,
                        checksum: "0CC175B9C0F1B6A831C399E269772661".into(),
                    }),
                    body_encoding: v2::Encoding::Identity as i32,
                    message_type: v2::MessageType::Normal as i32,
                    born_timestamp: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    queue_id: 3,
                    delivery_attempt: Some(1),
                    ..Default::default()
                }),
                body: b"a".to_vec().into(),
            }],
        };
        let bytes = req.encode_to_vec();
        // SendMessageRequest.messages is field 1, length-delimited.
        assert_eq!(bytes[0], 0x0a);
        let back = v2::SendMessageRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, req);

        // Message.topic is field 1; Resource.name is field 2.
        let topic = v2::Resource {
            resource_namespace: String::new(),
            name: "T".into(),
        };
        assert_eq!(topic.encode_to_vec(), vec![0x12, 0x01, b'T']);
    }

    #[test]
    fn telemetry_settings_is_field_2() {
        let cmd = v2::TelemetryCommand {
            status: None,
            command: Some(v2::telemetry_command::Command::Settings(
                v2::Settings::default(),
            )),
        };
        assert_eq!(cmd.encode_to_vec(), vec![0x12, 0x00]);
    }

    #[test]
    fn descriptor_set_decodes() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = fds.file.iter().filter_map(|f| f.name.as_deref()).collect();
        assert!(names.contains(&"apache/rocketmq/v2/service.proto"));
        assert!(names.contains(&"sofamq/namesrv/v1/namesrv.proto"));
    }
}
