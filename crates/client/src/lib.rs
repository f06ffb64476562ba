//! sofamq-client
