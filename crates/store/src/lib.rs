//! sofamq-store
