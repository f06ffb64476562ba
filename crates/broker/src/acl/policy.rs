//! Users and their policies: allow or deny Pub/Sub on topics and groups, by
//! exact name or prefix (`orders-*`). Deny wins; no matching allow means deny.

use serde::{Deserialize, Serialize};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Send to a topic.
    Pub,
    /// Consume from a topic or as a group.
    Sub,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grants the actions.
    Allow,
    /// Refuses the actions, whatever else allows them.
    Deny,
}

/// What a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Topics.
    Topic,
    /// Consumer groups.
    Group,
}

/// One rule: `effect` `actions` on resources of `kind` whose name matches `pattern`
/// (exact, or a prefix when it ends with `*`; `*` alone matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Allow or deny.
    pub effect: Effect,
    /// Topic or group.
    pub kind: Kind,
    /// Name or `prefix*`.
    pub pattern: String,
    /// Actions covered.
    pub actions: Vec<Action>,
}

impl Rule {
    /// Whether the rule covers `action` on the `kind` resource `name`.
    pub fn matches(&self, kind: Kind, name: &str, action: Action) -> bool {
        self.kind == kind
            && self.actions.contains(&action)
            && match self.pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => self.pattern == name,
            }
    }

    /// Parses `allow|deny:topic|group:PATTERN:pub,sub`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        let parts: Vec<&str> = s.splitn(4, ':').collect();
        let [effect, kind, pattern, actions] = parts[..] else {
            return Err(format!("rule {s:?} is not effect:kind:pattern:actions"));
        };
        let effect = match effect {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            e => return Err(format!("effect {e:?} is not allow or deny")),
        };
        let kind = match kind {
            "topic" => Kind::Topic,
            "group" => Kind::Group,
            k => return Err(format!("kind {k:?} is not topic or group")),
        };
        if pattern.is_empty() || pattern.len() > 255 {
            return Err("pattern must be 1..=255 bytes".into());
        }
        let actions = actions
            .split(',')
            .map(|a| match a.trim().to_ascii_lowercase().as_str() {
                "pub" => Ok(Action::Pub),
                "sub" => Ok(Action::Sub),
                other => Err(format!("action {other:?} is not pub or sub")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            effect,
            kind,
            pattern: pattern.to_string(),
            actions,
        })
    }
}

impl std::fmt::Display for Rule {
    /// The form [`Rule::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let kind = match self.kind {
            Kind::Topic => "topic",
            Kind::Group => "group",
        };
        let actions: Vec<&str> = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Pub => "pub",
                Action::Sub => "sub",
            })
            .collect();
        write!(f, "{effect}:{kind}:{}:{}", self.pattern, actions.join(","))
    }
}

/// A user: credentials, admin flag and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Access key (the user's name on the wire).
    pub access_key: String,
    /// Secret key the client signs with.
    pub secret_key: String,
    /// Admins may use the admin API and are allowed every Pub/Sub not denied.
    pub admin: bool,
    /// The user's rules.
    pub rules: Vec<Rule>,
}

impl User {
    /// Whether this user may do `action` on the `kind` resource `name`: any
    /// matching deny refuses; otherwise a matching allow (or being admin) grants.
    pub fn permits(&self, kind: Kind, name: &str, action: Action) -> bool {
        let mut allowed = self.admin;
        for r in self.rules.iter().filter(|r| r.matches(kind, name, action)) {
            match r.effect {
                Effect::Deny => return false,
                Effect::Allow => allowed = true,
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rules: &[&str]) -> User {
        User {
            access_key: "u".into(),
            secret_key: "s".into(),
            admin: false,
            rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        }
    }

    #[test]
    fn exact_prefix_and_deny_wins() {
        let u = user(&[
            "allow:topic:orders-*:pub,sub",
            "deny:topic:orders-secret:pub",
            "allow:group:billing:sub",
        ]);
        assert!(u.permits(Kind::Topic, "orders-eu", Action::Pub));
        assert!(u.permits(Kind::Topic, "orders-secret", Action::Sub));
        assert!(
            !u.permits(Kind::Topic, "orders-secret", Action::Pub),
            "deny wins"
        );
        assert!(
            !u.permits(Kind::Topic, "payments", Action::Pub),
            "no allow, no access"
        );
        assert!(u.permits(Kind::Group, "billing", Action::Sub));
        assert!(
            !u.permits(Kind::Group, "billing2", Action::Sub),
            "exact match only"
        );
        assert!(!u.permits(Kind::Group, "billing", Action::Pub));
    }

    #[test]
    fn admins_are_allowed_unless_denied() {
        let mut u = user(&["deny:topic:*:pub"]);
        u.admin = true;
        assert!(u.permits(Kind::Topic, "x", Action::Sub));
        assert!(!u.permits(Kind::Topic, "x", Action::Pub));
    }

    #[test]
    fn rule_parsing_errors_are_precise() {
        assert!(Rule::parse("allow:topic:t").is_err());
        assert!(Rule::parse("maybe:topic:t:pub").is_err());
        assert!(Rule::parse("allow:queue:t:pub").is_err());
        assert!(Rule::parse("allow:topic:t:read").is_err());
        assert!(Rule::parse("allow:topic::pub").is_err());
        let r = Rule::parse("deny:group:g-*:pub,sub").unwrap();
        assert_eq!(Rule::parse(&r.to_string()).unwrap(), r);
    }
}
