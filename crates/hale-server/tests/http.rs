//! HTTP integration tests for hale-server: a real server on 127.0.0.1:0 over
//! a temporary store, driven through a plain HTTP/1 client. Every JSON body
//! the server returns is checked against the official FHIR R4 JSON Schema.

mod common;

mod http {
    pub mod access;
    pub mod accounts;
    pub mod audit_auth;
    pub mod audit_trail;
    pub mod backfill;
    pub mod bad_input;
    pub mod booking;
    pub mod bulk;
    pub mod crud;
    pub mod everything;
    pub mod harness;
    pub mod interactions;
    pub mod ops;
    pub mod replay;
    pub mod search;
    pub mod synthea;
    pub mod transactions;
}
