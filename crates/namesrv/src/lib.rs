//! sofamq-namesrv
