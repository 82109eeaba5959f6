//! assim-daemon
