//! Message validation: everything is checked before anything is stored, and
//! each rule fails with its own wire code and a message naming the problem.

use sofamq_proto::v2::{Message, MessageType, SystemProperties};

use crate::error::BrokerError;
use crate::limits::Limits;
use crate::topics::{SYSTEM_PREFIX, TopicConfig, now_ms};

/// Property keys the broker itself writes into stored records.
pub mod keys {
    /// Client message id.
    pub const MSG_ID: &str = "__MSGID";
    /// Message keys, joined by [`KEY_SEP`].
    pub const KEYS: &str = "__KEYS";
    /// FIFO message group.
    pub const GROUP: &str = "__GROUP";
    /// Delivery time, epoch millis (DELAY messages).
    pub const DELIVER_AT: &str = "__DELIVER_AT";
    /// Producer host.
    pub const BORN_HOST: &str = "__BORN_HOST";
    /// Message type number (`apache.rocketmq.v2.MessageType`).
    pub const TYPE: &str = "__TYPE";
    /// Body encoding number.
    pub const ENCODING: &str = "__ENC";
    /// Trace context.
    pub const TRACE: &str = "__TRACE";
    /// Real topic of a timer or half message stored on a reserved topic.
    pub const REAL_TOPIC: &str = "__REAL_TOPIC";
    /// First check-back delay (ms) a transactional message asked for.
    pub const TXN_CHECK_MS: &str = "__TXN_CHECK_MS";
    /// Separator between keys; a control character, so no valid key contains it.
    pub const KEY_SEP: char = '\u{1}';
}

/// Property names RocketMQ reserves for its own use; users may not set them.
const RESERVED: &[&str] = &[
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "UNIQ_KEY",
    "ORIGIN_MESSAGE_ID",
    "RECONSUME_TIME",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "__STARTDELIVERTIME",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "SHARDING_KEY",
];

/// Checks a topic or group name: non-empty, at most `max` bytes, `[%A-Za-z0-9_-]`.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > max {
        return Err(format!("name is {} bytes, the limit is {max}", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '-')))
    {
        return Err(format!(
            "'{name}' contains {c:?}; allowed are letters, digits, '%', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a topic name a user may create or send to.
pub fn check_topic_name(name: &str, limits: &Limits) -> Result<(), BrokerError> {
    check_name(name, limits.max_name_bytes).map_err(BrokerError::IllegalTopic)?;
    if name.starts_with(SYSTEM_PREFIX) {
        return Err(BrokerError::IllegalTopic(format!(
            "'{name}' uses the reserved prefix {SYSTEM_PREFIX}"
        )));
    }
    Ok(())
}

fn has_control_or_blank(s: &str) -> bool {
    if s.is_ascii() {
        // The same rule without decoding chars: in ASCII the control characters are
        // 0..=0x1F and 0x7F, and every whitespace character but ' ' is a control one.
        return s.bytes().all(|b| b == b' ') || s.bytes().any(|b| b < 0x20 || b == 0x7F);
    }
    s.trim().is_empty() || s.chars().any(char::is_control)
}

/// The validated, normalised content of one message, ready to store.
#[derive(Debug)]
pub struct Checked {
    /// Type after inference from the message's properties.
    pub message_type: MessageType,
    /// FIFO group, when present.
    pub message_group: Option<String>,
    /// Tag (empty when none).
    pub tag: String,
    /// Record properties (system keys from [`keys`] plus user properties).
    pub properties: Vec<(String, String)>,
    /// Client message id.
    pub message_id: String,
    /// Delivery time (epoch ms) of a DELAY message.
    pub deliver_at_ms: Option<i64>,
}

/// User properties that carry a delay in RocketMQ's older forms.
const DELAY_PROPERTIES: &[&str] = &[
    "__STARTDELIVERTIME",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELAY_MS",
    "DELAY",
];

/// RocketMQ's delay levels 1..=18, in seconds.
const DELAY_LEVELS_S: [i64; 18] = [
    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];

/// Takes a delay property out of `msg.user_properties` and returns the delivery time it
/// means (epoch ms). Several of them, or an unparsable one, are refused. The clock (`now`)
/// is read only when a relative delay is found: most messages have no user property at all,
/// and this runs for every message.
fn take_delay_property(
    msg: &mut Message,
    now: impl FnOnce() -> i64,
) -> Result<Option<i64>, BrokerError> {
    if msg.user_properties.is_empty() {
        return Ok(None);
    }
    let found: Vec<&str> = DELAY_PROPERTIES
        .iter()
        .copied()
        .filter(|k| msg.user_properties.contains_key(*k))
        .collect();
    let key = match found.as_slice() {
        [] => return Ok(None),
        [k] => *k,
        _ => {
            return Err(BrokerError::IllegalDeliveryTime(format!(
                "several delay properties are set ({}); use one",
                found.join(", ")
            )));
        }
    };
    let raw = msg.user_properties.get(key).cloned().unwrap_or_default();
    let n: i64 = raw.trim().parse().map_err(|_| {
        BrokerError::IllegalDeliveryTime(format!("{key}={raw:?} is not an integer"))
    })?;
    let at = match key {
        "__STARTDELIVERTIME" | "TIMER_DELIVER_MS" => n,
        "TIMER_DELAY_SEC" if n >= 0 => now().saturating_add(n.saturating_mul(1000)),
        "TIMER_DELAY_MS" if n >= 0 => now().saturating_add(n),
        "DELAY" if (1..=18).contains(&n) => now() + DELAY_LEVELS_S[(n - 1) as usize] * 1000,
        _ => {
            return Err(BrokerError::IllegalDeliveryTime(format!(
                "{key}={n} is out of range"
            )));
        }
    };
    msg.user_properties.remove(key);
    Ok(Some(at))
}

/// Validates `msg` against `topic` and `limits`. On success the strings the record needs
/// (message id, tag, group, host, trace context, user properties) are moved out of `msg`
/// instead of copied; on failure `msg` is left untouched. The rules run in a fixed order,
/// so a message that breaks several always gets the same code.
pub fn check_message(
    msg: &mut Message,
    topic: &TopicConfig,
    limits: &Limits,
) -> Result<Checked, BrokerError> {
    check_body(msg, topic, limits)?;
    let sys = msg
        .system_properties
        .as_ref()
        .ok_or_else(|| BrokerError::BadRequest("system_properties missing".into()))?;
    check_identity(sys, limits)?;
    let declared = check_supported(sys)?;
    // The RocketMQ property forms of a delay (older and non-gRPC clients) become the
    // delivery time; they are taken out of the user properties.
    let prop_delay = take_delay_property(msg, now_ms)?;
    let Some(sys) = msg.system_properties.as_ref() else {
        return Err(BrokerError::BadRequest("system_properties missing".into()));
    };
    check_user_properties(msg, limits)?;
    let deliver_at_ms = delivery_time(sys, prop_delay)?;
    let has_group = sys.message_group.is_some();
    let message_type = message_type(declared, has_group, deliver_at_ms)?;
    let txn_check_ms = txn_check_ms(sys, message_type)?;
    check_topic_type(topic, message_type, has_group, deliver_at_ms)?;
    take_checked(msg, message_type, deliver_at_ms, txn_check_ms)
}

/// The topic takes writes; the body is not empty and within `max_body_bytes`.
fn check_body(msg: &Message, topic: &TopicConfig, limits: &Limits) -> Result<(), BrokerError> {
    if !topic.writable() {
        return Err(BrokerError::Forbidden(format!(
            "topic '{}' is not writable",
            topic.name
        )));
    }
    if msg.body.is_empty() {
        return Err(BrokerError::BodyEmpty);
    }
    if msg.body.len() > limits.max_body_bytes {
        return Err(BrokerError::BodyTooLarge(format!(
            "body is {} bytes, the limit is {}",
            msg.body.len(),
            limits.max_body_bytes
        )));
    }
    Ok(())
}

/// The message id, tag, keys and message group are well formed and within their limits.
fn check_identity(sys: &SystemProperties, limits: &Limits) -> Result<(), BrokerError> {
    let message_id = &sys.message_id;
    if message_id.is_empty()
        || message_id.len() > 128
        || !message_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(BrokerError::IllegalMessageId(format!(
            "message_id {message_id:?} must be 1..=128 printable ASCII characters"
        )));
    }
    if let Some(t) = &sys.tag {
        check_tag(t, limits)?;
    }
    if sys.keys.len() > limits.max_key_count {
        return Err(BrokerError::IllegalKey(format!(
            "{} keys, the limit is {}",
            sys.keys.len(),
            limits.max_key_count
        )));
    }
    for k in &sys.keys {
        if has_control_or_blank(k) || k.len() > limits.max_key_bytes {
            return Err(BrokerError::IllegalKey(format!(
                "key {k:?} is blank, has control characters or exceeds {} bytes",
                limits.max_key_bytes
            )));
        }
    }
    if let Some(g) = &sys.message_group
        && (has_control_or_blank(g) || g.len() > limits.max_name_bytes)
    {
        return Err(BrokerError::IllegalMessageGroup(format!(
            "message group {g:?} is blank, has control characters or exceeds {} bytes",
            limits.max_name_bytes
        )));
    }
    Ok(())
}

fn check_tag(t: &str, limits: &Limits) -> Result<(), BrokerError> {
    if has_control_or_blank(t) {
        return Err(BrokerError::IllegalTag(
            "tag is blank or contains control characters".into(),
        ));
    }
    if t.contains('|') {
        return Err(BrokerError::IllegalTag(format!(
            "tag {t:?} contains '|', which is reserved for filter expressions"
        )));
    }
    if t.len() > limits.max_tag_bytes {
        return Err(BrokerError::IllegalTag(format!(
            "tag is {} bytes, the limit is {}",
            t.len(),
            limits.max_tag_bytes
        )));
    }
    Ok(())
}

/// What the broker does not implement is refused, never stored and ignored. Returns the
/// declared message type.
fn check_supported(sys: &SystemProperties) -> Result<MessageType, BrokerError> {
    if let Some(p) = sys.priority {
        return Err(BrokerError::NotImplemented(format!(
            "message priority ({p}) is not supported by this broker"
        )));
    }
    if let Some(l) = &sys.lite_topic {
        return Err(BrokerError::NotImplemented(format!(
            "lite topics ({l:?}) are not supported by this broker"
        )));
    }
    let declared = MessageType::try_from(sys.message_type).unwrap_or(MessageType::Unspecified);
    if matches!(declared, MessageType::Lite | MessageType::Priority) {
        return Err(BrokerError::NotImplemented(format!(
            "{} messages are not supported by this broker",
            declared.as_str_name()
        )));
    }
    Ok(declared)
}

/// At most `max_property_count` user properties, none with an empty, control or reserved
/// key, at most `max_properties_bytes` in all.
fn check_user_properties(msg: &Message, limits: &Limits) -> Result<(), BrokerError> {
    if msg.user_properties.len() > limits.max_property_count {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "{} properties, the limit is {}",
            msg.user_properties.len(),
            limits.max_property_count
        )));
    }
    let mut prop_bytes = 0usize;
    for (k, v) in &msg.user_properties {
        if k.is_empty() || k.chars().any(char::is_control) {
            return Err(BrokerError::IllegalPropertyKey(format!(
                "property key {k:?} is empty or has control characters"
            )));
        }
        if k.starts_with("__") || RESERVED.contains(&k.as_str()) {
            return Err(BrokerError::IllegalPropertyKey(format!(
                "property key {k:?} is reserved"
            )));
        }
        prop_bytes += k.len() + v.len();
    }
    if prop_bytes > limits.max_properties_bytes {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "properties take {prop_bytes} bytes, the limit is {}",
            limits.max_properties_bytes
        )));
    }
    Ok(())
}

/// The delivery time (epoch ms): `delivery_timestamp` or a delay property, not both, and
/// not negative.
fn delivery_time(
    sys: &SystemProperties,
    prop_delay: Option<i64>,
) -> Result<Option<i64>, BrokerError> {
    let deliver_at_ms = sys
        .delivery_timestamp
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000));
    if deliver_at_ms.is_some() && prop_delay.is_some() {
        return Err(BrokerError::MessageTypeMismatch(
            "both delivery_timestamp and a delay property are set; use one".into(),
        ));
    }
    let deliver_at_ms = deliver_at_ms.or(prop_delay);
    if let Some(ms) = deliver_at_ms
        && ms < 0
    {
        return Err(BrokerError::IllegalDeliveryTime(format!(
            "delivery timestamp {ms} ms is negative"
        )));
    }
    Ok(deliver_at_ms)
}

/// The message's type: the declared one, else inferred (FIFO with a group, DELAY with a
/// delivery time, NORMAL otherwise); a delivery time turns NORMAL into DELAY and is
/// refused on a TRANSACTION message.
fn message_type(
    declared: MessageType,
    has_group: bool,
    deliver_at_ms: Option<i64>,
) -> Result<MessageType, BrokerError> {
    let inferred = if has_group {
        MessageType::Fifo
    } else if deliver_at_ms.is_some() {
        MessageType::Delay
    } else {
        MessageType::Normal
    };
    let message_type = match declared {
        MessageType::Unspecified => inferred,
        // A delay property on a message declared NORMAL still means a timer.
        MessageType::Normal if deliver_at_ms.is_some() => MessageType::Delay,
        other => other,
    };
    if message_type == MessageType::Transaction && deliver_at_ms.is_some() {
        return Err(BrokerError::MessageTypeMismatch(
            "a TRANSACTION message cannot have a delivery time".into(),
        ));
    }
    Ok(message_type)
}

/// The first check-back delay (ms) a TRANSACTION message asks for, if any.
fn txn_check_ms(
    sys: &SystemProperties,
    message_type: MessageType,
) -> Result<Option<i64>, BrokerError> {
    match &sys.orphaned_transaction_recovery_duration {
        None => Ok(None),
        Some(_) if message_type != MessageType::Transaction => {
            Err(BrokerError::MessageTypeMismatch(
                "orphaned_transaction_recovery_duration is for TRANSACTION messages only".into(),
            ))
        }
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(BrokerError::BadRequest(
            "orphaned_transaction_recovery_duration is negative".into(),
        )),
        Some(d) => Ok(Some(
            d.seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(d.nanos / 1_000_000)),
        )),
    }
}

/// The message's type is its topic's; a FIFO message has a group, a DELAY message a
/// delivery time.
fn check_topic_type(
    topic: &TopicConfig,
    message_type: MessageType,
    has_group: bool,
    deliver_at_ms: Option<i64>,
) -> Result<(), BrokerError> {
    let expected = MessageType::from(topic.topic_type);
    if message_type != expected {
        return Err(BrokerError::MessageTypeMismatch(format!(
            "topic '{}' is {} but the message is {}",
            topic.name,
            topic.topic_type.as_str(),
            message_type.as_str_name()
        )));
    }
    if message_type == MessageType::Fifo && !has_group {
        return Err(BrokerError::MessageTypeMismatch(
            "a FIFO message needs a message_group".into(),
        ));
    }
    if message_type == MessageType::Delay && deliver_at_ms.is_none() {
        return Err(BrokerError::MessageTypeMismatch(
            "a DELAY message needs a delivery_timestamp".into(),
        ));
    }
    Ok(())
}

/// Moves what the record needs out of the validated `msg`: the system properties become
/// record properties ([`keys`]), followed by the user properties, sorted.
fn take_checked(
    msg: &mut Message,
    message_type: MessageType,
    deliver_at_ms: Option<i64>,
    txn_check_ms: Option<i64>,
) -> Result<Checked, BrokerError> {
    let Some(sys) = msg.system_properties.as_mut() else {
        return Err(BrokerError::BadRequest("system_properties missing".into()));
    };
    let message_id = std::mem::take(&mut sys.message_id);
    let tag = sys.tag.take().unwrap_or_default();
    // Validated above: present exactly when it passed `check_identity`.
    let message_group = sys.message_group.take();
    let mut properties = Vec::with_capacity(msg.user_properties.len() + 6);
    properties.push((keys::MSG_ID.to_string(), message_id.clone()));
    properties.push((keys::TYPE.to_string(), type_number(message_type)));
    if !sys.keys.is_empty() {
        properties.push((
            keys::KEYS.to_string(),
            sys.keys.join(&keys::KEY_SEP.to_string()),
        ));
    }
    if let Some(g) = &message_group {
        properties.push((keys::GROUP.to_string(), g.clone()));
    }
    if let Some(ms) = deliver_at_ms {
        properties.push((keys::DELIVER_AT.to_string(), ms.to_string()));
    }
    if !sys.born_host.is_empty() {
        properties.push((
            keys::BORN_HOST.to_string(),
            truncate(std::mem::take(&mut sys.born_host), 255),
        ));
    }
    if sys.body_encoding != 0 {
        properties.push((keys::ENCODING.to_string(), decimal(sys.body_encoding)));
    }
    if let Some(t) = sys.trace_context.take() {
        properties.push((keys::TRACE.to_string(), truncate(t, 1024)));
    }
    if let Some(ms) = txn_check_ms {
        properties.push((keys::TXN_CHECK_MS.to_string(), ms.to_string()));
    }
    let start = properties.len();
    // Drained, not `mem::take`n: taking would build an empty map with a fresh RandomState.
    properties.extend(msg.user_properties.drain());
    properties[start..].sort();
    Ok(Checked {
        message_type,
        message_group,
        tag,
        properties,
        message_id,
        deliver_at_ms,
    })
}

/// The decimal form of a message type number (what `to_string` gives, without the
/// formatting machinery: every defined type is a single digit).
fn type_number(t: MessageType) -> String {
    decimal(t as i32)
}

/// `n.to_string()`, with a shortcut for the single digits every enum number here is.
fn decimal(n: i32) -> String {
    match u8::try_from(n) {
        Ok(d @ 0..=9) => char::from(b'0' + d).to_string(),
        _ => n.to_string(),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn with_props(props: &[(&str, &str)]) -> Message {
        Message {
            user_properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// The clock is read only for a relative delay; the property found is taken out.
    #[test]
    fn delay_properties_read_the_clock_only_when_relative() {
        let reads = Cell::new(0);
        let now = || {
            reads.set(reads.get() + 1);
            1_000
        };
        assert_eq!(
            take_delay_property(&mut with_props(&[]), now).unwrap(),
            None
        );
        let mut plain = with_props(&[("color", "red")]);
        assert_eq!(take_delay_property(&mut plain, now).unwrap(), None);
        assert_eq!(plain.user_properties.len(), 1);
        let mut abs = with_props(&[("TIMER_DELIVER_MS", "5000"), ("color", "red")]);
        assert_eq!(take_delay_property(&mut abs, now).unwrap(), Some(5_000));
        assert!(!abs.user_properties.contains_key("TIMER_DELIVER_MS"));
        assert_eq!(reads.get(), 0, "no relative delay: no clock read");
        let mut rel = with_props(&[("TIMER_DELAY_SEC", "3")]);
        assert_eq!(take_delay_property(&mut rel, now).unwrap(), Some(4_000));
        assert!(rel.user_properties.is_empty());
        let mut lvl = with_props(&[("DELAY", "2")]);
        assert_eq!(take_delay_property(&mut lvl, now).unwrap(), Some(6_000));
        assert_eq!(reads.get(), 2);
        let mut two = with_props(&[("DELAY", "2"), ("TIMER_DELAY_MS", "1")]);
        assert!(take_delay_property(&mut two, now).is_err());
        assert_eq!(
            two.user_properties.len(),
            2,
            "a refused message is left as it was"
        );
    }
}
