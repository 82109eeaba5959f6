//! assim-seal
