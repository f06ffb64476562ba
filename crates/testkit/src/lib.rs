//! sofamq-testkit
