//! The name server in proxy mode (the default), through real processes: routes name the
//! access point the client used, every client RPC is forwarded to the current master of
//! its broker group (receipt handles wrapped with the group), the SofaMQ SDK still gets
//! direct routes, and a request that finds its group without a reachable master is held
//! and completes when the master is back, instead of failing at once.

use std::time::{Duration, Instant};

use sofamq_proto::v2::{
    self as v2, messaging_service_client::MessagingServiceClient, receive_message_response,
};
use sofamq_testkit::{Cluster, Node};
use tonic::transport::Channel;

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource {
        name: name.into(),
        ..Default::default()
    })
}

fn raw_message(topic: &str, id: &str, queue: i32) -> v2::Message {
    v2::Message {
        topic: resource(topic),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            born_host: "test".into(),
            queue_id: queue,
            ..Default::default()
        }),
        body: format!("body-{id}").into_bytes().into(),
        ..Default::default()
    }
}

async fn client(addr: &str) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Sends one raw message; it must be answered OK.
async fn send_ok(c: &mut MessagingServiceClient<Channel>, topic: &str, id: &str, queue: i32) {
    let r = c
        .send_message(v2::SendMessageRequest {
            messages: vec![raw_message(topic, id, queue)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status.as_ref().map(|s| s.code),
        Some(v2::Code::Ok as i32),
        "{id}: {r:?}"
    );
}

fn endpoints_of(addr: &str) -> v2::Endpoints {
    let (host, port) = addr.rsplit_once(':').unwrap();
    v2::Endpoints {
        scheme: v2::AddressScheme::IPv4 as i32,
        addresses: vec![v2::Address {
            host: host.into(),
            port: port.parse().unwrap(),
        }],
    }
}

async fn route(ns: &str, topic: &str, direct: bool, wait: Duration) -> Vec<v2::MessageQueue> {
    let deadline = Instant::now() + wait;
    loop {
        let mut req = tonic::Request::new(v2::QueryRouteRequest {
            topic: resource(topic),
            endpoints: Some(endpoints_of(ns)),
        });
        if direct {
            req.metadata_mut()
                .insert("x-sofamq-route", "direct".parse().unwrap());
        }
        let r = client(ns)
            .await
            .query_route(req)
            .await
            .unwrap()
            .into_inner();
        if r.status
            .as_ref()
            .is_some_and(|s| s.code == v2::Code::Ok as i32)
        {
            return r.message_queues;
        }
        assert!(Instant::now() < deadline, "no route for {topic}: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn addr_of(q: &v2::MessageQueue) -> String {
    let a = &q
        .broker
        .as_ref()
        .unwrap()
        .endpoints
        .as_ref()
        .unwrap()
        .addresses[0];
    format!("{}:{}", a.host, a.port)
}

fn two_groups(topic: &str) -> Cluster {
    let mut c = Cluster::start_namesrv().unwrap();
    let t = format!("{topic}:2");
    c.add_broker("broker-a", &["--topic".into(), t.clone()])
        .unwrap();
    c.add_broker("broker-b", &["--topic".into(), t]).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_name_the_access_point_and_forward_every_rpc() {
    let c = two_groups("pt");
    let ns = c.namesrv.addr.clone();
    let queues = route(&ns, "pt", false, Duration::from_secs(20)).await;
    // Wait until both groups are in the route.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut queues = queues;
    while queues.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "both groups never in the route: {queues:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        queues = route(&ns, "pt", false, Duration::from_secs(5)).await;
    }
    assert!(
        queues.iter().all(|q| addr_of(q) == ns),
        "proxy route: {queues:?}"
    );
    let names: std::collections::BTreeSet<_> = queues
        .iter()
        .map(|q| q.broker.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names.len(), 2);
    // The SDK's direct routes name the brokers.
    let direct = route(&ns, "pt", true, Duration::from_secs(5)).await;
    assert!(
        direct.iter().all(|q| addr_of(q) != ns),
        "direct route: {direct:?}"
    );
    let broker_addrs: std::collections::BTreeSet<_> = direct.iter().map(addr_of).collect();
    assert_eq!(broker_addrs.len(), 2);

    // Assignments (push consumers) name the proxy too, once per queue of every group.
    let a = client(&ns)
        .await
        .query_assignment(v2::QueryAssignmentRequest {
            topic: resource("pt"),
            group: resource("proxy-group"),
            endpoints: Some(endpoints_of(&ns)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.status.as_ref().unwrap().code,
        v2::Code::Ok as i32,
        "{a:?}"
    );
    let assigned: Vec<_> = a
        .assignments
        .iter()
        .map(|x| x.message_queue.clone().unwrap())
        .collect();
    assert!(assigned.iter().all(|q| addr_of(q) == ns), "{assigned:?}");
    let keys: std::collections::BTreeSet<_> = assigned
        .iter()
        .map(|q| (q.broker.as_ref().unwrap().name.clone(), q.id))
        .collect();
    assert_eq!(
        keys.len(),
        assigned.len(),
        "no duplicate assignment: {assigned:?}"
    );
    assert_eq!(
        keys.iter()
            .map(|k| &k.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2
    );

    // Sends through the proxy reach both groups.
    let mut cl = client(&ns).await;
    for i in 0..8 {
        let r = cl
            .send_message(v2::SendMessageRequest {
                messages: vec![raw_message("pt", &format!("PX{i:04}"), i % 2)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status.as_ref().unwrap().code,
            v2::Code::Ok as i32,
            "{r:?}"
        );
    }
    // Receive every queue through the proxy: handles are wrapped with the group; ack and
    // change-invisible-duration go back through the proxy to the right group.
    let mut got = 0;
    let mut acked = 0;
    for q in &queues {
        let mut s = cl
            .receive_message(v2::ReceiveMessageRequest {
                group: resource("proxy-group"),
                message_queue: Some(q.clone()),
                filter_expression: Some(v2::FilterExpression {
                    r#type: v2::FilterType::Tag as i32,
                    expression: "*".into(),
                }),
                batch_size: 16,
                invisible_duration: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                auto_renew: false,
                long_polling_timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let group = q.broker.as_ref().unwrap().name.clone();
        let mut handles = Vec::new();
        while let Some(item) = s.message().await.unwrap() {
            if let Some(receive_message_response::Content::Message(m)) = item.content {
                let sp = m.system_properties.unwrap();
                let h = sp.receipt_handle.unwrap();
                assert!(
                    h.starts_with(&format!("P1{:02x}{group}", group.len())),
                    "{h}"
                );
                handles.push((sp.message_id, h));
            }
        }
        got += handles.len();
        for (i, (id, h)) in handles.into_iter().enumerate() {
            if i % 2 == 0 {
                let r = cl
                    .ack_message(v2::AckMessageRequest {
                        group: resource("proxy-group"),
                        topic: resource("pt"),
                        entries: vec![v2::AckMessageEntry {
                            message_id: id,
                            receipt_handle: h.clone(),
                            lite_topic: None,
                        }],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
                assert_eq!(r.entries[0].receipt_handle, h);
                acked += 1;
            } else {
                let r = cl
                    .change_invisible_duration(v2::ChangeInvisibleDurationRequest {
                        group: resource("proxy-group"),
                        topic: resource("pt"),
                        receipt_handle: h.clone(),
                        invisible_duration: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                        message_id: id,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
                assert!(r.receipt_handle.starts_with("P1") && r.receipt_handle != h);
            }
        }
    }
    assert_eq!(got, 8, "every message received through the proxy");
    // Both paths ran: some handles acked, the others' invisibility changed.
    assert!(acked > 0 && acked < got, "acked {acked} of {got}");
    // A handle the proxy did not issue and that names no group of the topic is refused.
    let r = cl
        .ack_message(v2::AckMessageRequest {
            group: resource("proxy-group"),
            topic: resource("nope"),
            entries: vec![v2::AckMessageEntry {
                message_id: "x".into(),
                receipt_handle: "00ff".into(),
                lite_topic: None,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.entries[0].status.as_ref().unwrap().code,
        v2::Code::InvalidReceiptHandle as i32
    );
}

/// The group's only master is killed -9 (and expires from the registry): a send through
/// the proxy is held (not failed at once, not TOPIC_NOT_FOUND) and, when the broker is back
/// on its address within the hold, completes with OK. When nothing comes back, the client
/// hears HA_NOT_AVAILABLE before its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_holds_a_send_while_the_group_has_no_master() {
    // A hold long enough for a debug-build broker to restart on a loaded machine.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("namesrv.toml");
    std::fs::write(&cfg, "[proxy]\nhold_ms = 15000\n").unwrap();
    let namesrv = Node::spawn(
        "namesrv",
        &[
            "namesrv".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--broker-expiry-ms".into(),
            "1000".into(),
        ],
        dir.path(),
        Duration::from_secs(20),
    )
    .unwrap();
    let mut c = Cluster {
        dir,
        namesrv,
        brokers: Vec::new(),
    };
    c.add_broker("broker-a", &["--topic".into(), "ph:1".into()])
        .unwrap();
    let ns = c.namesrv.addr.clone();
    route(&ns, "ph", false, Duration::from_secs(20)).await;
    let broker_addr = c.brokers[0].addr.clone();
    let send = |id: &str, timeout: Duration| {
        let ns = ns.clone();
        let msg = raw_message("ph", id, 0);
        async move {
            let mut req = tonic::Request::new(v2::SendMessageRequest {
                messages: vec![msg],
            });
            req.set_timeout(timeout);
            let t = Instant::now();
            let r = client(&ns).await.send_message(req).await;
            (r.map(|r| r.into_inner()), t.elapsed())
        }
    };
    let (r, _) = send("PH0001", Duration::from_secs(3)).await;
    assert_eq!(r.unwrap().status.unwrap().code, v2::Code::Ok as i32);

    // Down: held, then HA_NOT_AVAILABLE inside the client's 3 s (the hold is bounded by
    // the client's deadline less a margin).
    c.brokers[0].kill9();
    // Let the dead broker expire from the registry: the topic is then in no live route,
    // but it was a moment ago, so the send is held, not refused with TOPIC_NOT_FOUND.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (r, took) = send("PH0002", Duration::from_secs(3)).await;
    let st = r
        .expect("the proxy answers before the deadline")
        .status
        .unwrap();
    assert_eq!(st.code, v2::Code::HaNotAvailable as i32, "{st:?}");
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(3),
        "held for {took:?}"
    );

    // Back within the hold: the held send completes.
    let data = c.dir.path().join("broker-a");
    let args: Vec<String> = vec![
        "broker".into(),
        "--broker-name".into(),
        "broker-a".into(),
        "--listen".into(),
        broker_addr.clone(),
        "--namesrv".into(),
        ns.clone(),
        "--data-dir".into(),
        data.display().to_string(),
        "--heartbeat-ms".into(),
        "200".into(),
        "--topic".into(),
        "ph:1".into(),
    ];
    let held = tokio::spawn(send("PH0003", Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = Node::spawn("broker-a-2", &args, c.dir.path(), Duration::from_secs(20)).unwrap();
    c.brokers[0] = node;
    let (r, took) = held.await.unwrap();
    let r = r.unwrap();
    assert_eq!(
        r.status.as_ref().unwrap().code,
        v2::Code::Ok as i32,
        "held send after {took:?}: {r:?}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

/// A client's retry of a send (the same message id) goes through the proxy to the broker
/// group of its first attempt, whose idempotence window answers it with the stored copy:
/// one copy in the cluster, not one in each group the round robin would pick. New ids
/// still spread over both groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_goes_to_the_group_of_its_first_attempt_through_any_name_server() {
    // Two name servers, both groups registered with each: an official client's retry
    // may reach the other one (its first was cut off or restarted).
    let mut c = Cluster::start_namesrv().unwrap();
    let ns2 = Node::spawn(
        "namesrv-2",
        &["namesrv".into(), "--listen".into(), "127.0.0.1:0".into()],
        c.dir.path(),
        Duration::from_secs(20),
    )
    .unwrap();
    for name in ["broker-a", "broker-b"] {
        c.add_broker(
            name,
            &[
                "--topic".into(),
                "pin:2".into(),
                "--namesrv".into(),
                ns2.addr.clone(),
            ],
        )
        .unwrap();
    }
    let servers = [c.namesrv.addr.clone(), ns2.addr.clone()];
    let deadline = Instant::now() + Duration::from_secs(20);
    for ns in &servers {
        while route(ns, "pin", false, Duration::from_secs(5)).await.len() < 4 {
            assert!(
                Instant::now() < deadline,
                "both groups never in {ns}'s route"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut clients = [client(&servers[0]).await, client(&servers[1]).await];
    let mut send = async |via: usize, id: &str, queue: i32| {
        send_ok(&mut clients[via], "pin", id, queue).await;
    };
    // (A round robin per name server would not stay in step with the other's.)
    send(0, "first", 0).await;
    // Every id three times: through one name server, the other, and the first again.
    let ids: Vec<String> = (0..20).map(|i| format!("retried-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        for attempt in 0..3 {
            send((i + attempt) % 2, id, attempt as i32).await;
        }
    }
    for b in &mut c.brokers {
        b.terminate(Duration::from_secs(10));
    }
    let mut copies: std::collections::HashMap<String, Vec<&str>> = Default::default();
    for name in ["broker-a", "broker-b"] {
        let store = c.dir.path().join(name).join("store");
        for m in sofamq_testkit::logs::messages(&store).unwrap() {
            if m.0 == "pin" {
                copies.entry(m.1).or_default().push(name);
            }
        }
    }
    for id in &ids {
        assert_eq!(copies[id].len(), 1, "{id} stored in {:?}", copies[id]);
    }
    let groups: std::collections::BTreeSet<&str> = ids.iter().map(|id| copies[id][0]).collect();
    assert_eq!(groups.len(), 2, "ids spread over both groups");
}

/// A group whose master lost its only in-sync slave takes no writes. Its master says it holds
/// none of a new send (the not-held header), so the proxy moves the send to the topic's
/// other group at once, instead of holding it until the client's deadline and answering
/// HA_NOT_AVAILABLE (an official client's retry would meet the same group again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_group_takes_no_writes_and_holds_none_of_it_moves_to_another_group() {
    use sofamq_proto::admin::ReplicationStatusRequest;
    use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
    use sofamq_testkit::repl::ReplBroker;

    let mut c = Cluster::start_namesrv().unwrap();
    let ns = c.namesrv.addr.clone();
    let dir = c.dir.path().to_path_buf();
    let topic = ["--topic", "mv:2"];
    let mut m = ReplBroker::new(&dir, &ns, "broker-a", "a0").unwrap();
    let mut s = ReplBroker::new(&dir, &ns, "broker-a", "a1").unwrap();
    m.start(
        "broker-a",
        None,
        &[&["--ack-timeout-ms", "500"][..], &topic].concat(),
    )
    .unwrap();
    let m_repl = m.repl.clone();
    s.start("broker-a", Some(&m_repl), &[]).unwrap();
    c.add_broker("broker-b", &["--topic".into(), "mv:2".into()])
        .unwrap();
    let in_sync = async |addr: &str| {
        let mut a = BrokerAdminClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        a.replication_status(ReplicationStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .in_sync_slaves
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_sync(&m.grpc).await == 0 {
        assert!(Instant::now() < deadline, "broker-a's slave never in sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while route(&ns, "mv", false, Duration::from_secs(5)).await.len() < 4 {
        assert!(Instant::now() < deadline, "both groups never in the route");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_sync(&m.grpc).await > 0 {
        assert!(Instant::now() < deadline, "the dead slave stayed in sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cl = client(&ns).await;
    let ids: Vec<String> = (0..20).map(|i| format!("mv-{i}")).collect();
    let began = Instant::now();
    for id in &ids {
        send_ok(&mut cl, "mv", id, 0).await;
    }
    eprintln!("20 sends in {:?}", began.elapsed());
    for b in &mut c.brokers {
        b.terminate(Duration::from_secs(10));
    }
    let on_b: Vec<String> = sofamq_testkit::logs::messages(&dir.join("broker-b").join("store"))
        .unwrap()
        .into_iter()
        .filter(|m| m.0 == "mv")
        .map(|m| m.1)
        .collect();
    m.stop();
    let on_a = sofamq_testkit::logs::messages(&m.store_dir()).unwrap();
    assert!(
        on_a.iter().all(|m| !m.1.starts_with("mv-")),
        "broker-a stored a send it had refused"
    );
    for id in &ids {
        assert_eq!(
            on_b.iter().filter(|b| *b == id).count(),
            1,
            "{id}: {on_b:?}"
        );
    }
}
