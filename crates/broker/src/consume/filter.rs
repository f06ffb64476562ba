//! Tag filter expressions: `*` (or empty) matches everything, `a || b || c`
//! matches those tags. Matching is on the consume queue's tag hash first and
//! confirmed on the record's tag.

use sofamq_proto::v2::{FilterExpression, FilterType};
use sofamq_store::tag_hash;

/// Most tags in one expression.
pub const MAX_TAGS: usize = 64;
/// Longest expression.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// A parsed tag filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// Every message.
    All,
    /// Messages whose tag is one of these (with their hashes).
    Tags(Vec<(String, u64)>),
}

impl TagFilter {
    /// Parses the request's expression (absent = all).
    pub fn parse(expr: Option<&FilterExpression>) -> Result<Self, String> {
        let Some(e) = expr else {
            return Ok(Self::All);
        };
        if e.r#type == FilterType::Sql as i32 {
            return Err("SQL filter expressions are not supported; use tags".into());
        }
        Self::parse_tags(&e.expression)
    }

    /// Parses `*` or `a || b`.
    pub fn parse_tags(s: &str) -> Result<Self, String> {
        if s.len() > MAX_EXPRESSION_BYTES {
            return Err(format!(
                "filter expression is {} bytes, the limit is {MAX_EXPRESSION_BYTES}",
                s.len()
            ));
        }
        let s = s.trim();
        if s.is_empty() || s == "*" {
            return Ok(Self::All);
        }
        let mut tags = Vec::new();
        for t in s.split("||") {
            let t = t.trim();
            if t.is_empty() {
                return Err(format!("filter expression {s:?} has an empty tag"));
            }
            if t == "*" {
                return Ok(Self::All);
            }
            if !tags.iter().any(|(x, _)| x == t) {
                tags.push((t.to_string(), tag_hash(t)));
            }
            if tags.len() > MAX_TAGS {
                return Err(format!("more than {MAX_TAGS} tags in the filter"));
            }
        }
        Ok(Self::Tags(tags))
    }

    /// Whether a consume-queue entry with this tag hash may match.
    pub fn may_match(&self, hash: u64) -> bool {
        match self {
            Self::All => true,
            Self::Tags(t) => t.iter().any(|(_, h)| *h == hash),
        }
    }

    /// Whether a record with this tag matches.
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            Self::All => true,
            Self::Tags(t) => t.iter().any(|(x, _)| x == tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions() {
        assert_eq!(TagFilter::parse_tags("*").unwrap(), TagFilter::All);
        assert_eq!(TagFilter::parse_tags(" ").unwrap(), TagFilter::All);
        let f = TagFilter::parse_tags("a || b").unwrap();
        assert!(f.matches("a") && f.matches("b") && !f.matches("c") && !f.matches(""));
        assert!(f.may_match(tag_hash("b")) && !f.may_match(tag_hash("c")));
        assert!(TagFilter::parse_tags("a || ").is_err());
        assert!(TagFilter::parse_tags(&"x".repeat(5000)).is_err());
        let sql = FilterExpression {
            r#type: FilterType::Sql as i32,
            expression: "a > 1".into(),
        };
        assert!(TagFilter::parse(Some(&sql)).is_err());
    }
}
