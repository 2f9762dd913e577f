//! authrpc
mod password;
