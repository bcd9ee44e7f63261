#![allow(dead_code)]
//! Shared test harness: the real server in-process, clients, and the hostile proxy.

pub mod proxy;
