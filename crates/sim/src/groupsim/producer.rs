//! The producer host and the send shim: senders retrying the same ids across brokers, and
//! each broker's end of a length-prefixed `SendMessageRequest` stream into `Broker::send`.

use super::*;

async fn read_msg(s: &mut turmoil::net::TcpStream) -> io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    if len > 1 << 20 {
        return Err(io::Error::other("frame too large"));
    }
    let mut buf = vec![0; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_msg(s: &mut turmoil::net::TcpStream, body: &[u8]) -> io::Result<()> {
    s.write_u32(u32::try_from(body.len()).map_err(io::Error::other)?)
        .await?;
    s.write_all(body).await?;
    s.flush().await
}

/// The send shim: frames of `SendMessageRequest` in, `epoch (u64) + SendMessageResponse` out.
pub(super) async fn serve_sends(mut s: turmoil::net::TcpStream, broker: Broker) {
    loop {
        let Ok(buf) = read_msg(&mut s).await else {
            return;
        };
        let Ok(req) = SendMessageRequest::decode(buf.as_slice()) else {
            return;
        };
        let resp = broker.send(req).await;
        let mut out = broker.store().current_epoch().to_be_bytes().to_vec();
        resp.encode(&mut out).ok();
        if write_msg(&mut s, &out).await.is_err() {
            return;
        }
    }
}

fn request(ids: &[u64]) -> SendMessageRequest {
    SendMessageRequest {
        messages: ids
            .iter()
            .map(|id| Message {
                topic: Some(Resource {
                    name: TOPIC.into(),
                    resource_namespace: String::new(),
                }),
                user_properties: HashMap::new(),
                system_properties: Some(SystemProperties {
                    message_id: format!("M{id}"),
                    message_type: MessageType::Normal as i32,
                    ..Default::default()
                }),
                body: body_of(*id).into_bytes().into(),
            })
            .collect(),
    }
}

/// One attempt: Ok(Some(epoch, response)) or an error.
async fn attempt(
    conn: &mut Option<turmoil::net::TcpStream>,
    to: &str,
    req: &[u8],
) -> io::Result<(u64, SendMessageResponse)> {
    let s = match conn {
        Some(s) => s,
        None => conn.insert(turmoil::net::TcpStream::connect(to).await?),
    };
    write_msg(s, req).await?;
    let buf = read_msg(s).await?;
    if buf.len() < 8 {
        return Err(io::Error::other("short reply"));
    }
    let epoch = u64::from_be_bytes(buf[..8].try_into().map_err(io::Error::other)?);
    let resp = SendMessageResponse::decode(&buf[8..]).map_err(io::Error::other)?;
    Ok((epoch, resp))
}

/// The producer host: a few concurrent senders, as many clients would be (a master cut off
/// from its slaves then holds several unreplicated requests, not one).
pub(super) async fn producer(l: Rc<Ledger>, seed: u64) -> turmoil::Result {
    for k in 0..PRODUCERS {
        let rng = StdRng::seed_from_u64(seed ^ (0x5eed + k));
        tokio::task::spawn_local(sender(l.clone(), rng, k % l.brokers));
    }
    idle().await
}

async fn sender(l: Rc<Ledger>, mut rng: StdRng, mut target: u64) {
    let mut conns: Vec<Option<turmoil::net::TcpStream>> = (0..l.brokers).map(|_| None).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while !l.stop_producer.get() {
        let n = rng.random_range(1..=3);
        let first = l.next_id.get();
        l.next_id.set(first + n);
        let ids: Vec<u64> = (first..first + n).collect();
        l.sent.borrow_mut().extend(ids.iter().copied());
        let mut bytes = Vec::new();
        request(&ids).encode(&mut bytes).ok();
        let mut pending: BTreeSet<u64> = ids.iter().copied().collect();
        for _try in 0..8 {
            if l.stop_producer.get() {
                break;
            }
            let to = format!("{}:{SEND_PORT}", host(target));
            let r = tokio::time::timeout(
                Duration::from_millis(2_500),
                attempt(&mut conns[target as usize], &to, &bytes),
            )
            .await;
            let ok = match r {
                Ok(Ok((epoch, resp))) => {
                    let whole = resp.status.as_ref().map_or(-1, |s| s.code);
                    for (id, e) in ids.iter().zip(&resp.entries) {
                        if e.status.as_ref().is_some_and(|s| s.code == Code::Ok as i32) {
                            pending.remove(id);
                            l.last_ack_ms.set(sim_ms());
                            l.acked.borrow_mut().insert(
                                *id,
                                Ack {
                                    broker: target,
                                    epoch,
                                },
                            );
                            l.ack_epochs
                                .borrow_mut()
                                .entry(epoch)
                                .or_default()
                                .insert(target);
                        }
                    }
                    if !pending.is_empty() {
                        l.j.error(&format!("p: b{target} answered {whole}"));
                    }
                    pending.is_empty()
                }
                Ok(Err(e)) => {
                    l.j.error(&format!("p: b{target}: {e}"));
                    conns[target as usize] = None;
                    false
                }
                Err(_) => {
                    l.j.error(&format!("p: b{target}: timed out"));
                    conns[target as usize] = None;
                    false
                }
            };
            if ok {
                break;
            }
            target = (target + 1) % l.brokers;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
        }
        let pause = rng.random_range(0..10u64).saturating_sub(4);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

pub(super) async fn idle() -> turmoil::Result {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
