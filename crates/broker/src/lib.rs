//! sofamq-broker
