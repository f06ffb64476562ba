//! sofamq-proto
