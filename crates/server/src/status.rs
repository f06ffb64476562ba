//! Builders for the RocketMQ response `Status` (outcome in the body; the gRPC
//! status stays OK).

use sofamq_proto::v2::{Code, Status};

/// `Status{code, message}`.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status {
        code: code as i32,
        message: message.into(),
    }
}

/// `Status{OK, "OK"}`.
pub fn ok() -> Status {
    status(Code::Ok, "OK")
}
