//! Fixtures shared by the store's integration tests.

use hale_store::{Actor, WriteOp};
use serde_json::{json, Value};

pub fn actor() -> Actor {
    Actor {
        user: "tester".into(),
        role: "clinician".into(),
    }
}

/// A create-or-update of `rtype/id` with `r` as its body.
pub fn put(rtype: &str, id: &str, mut r: Value) -> WriteOp {
    r["resourceType"] = json!(rtype);
    r["id"] = json!(id);
    WriteOp::Update {
        rtype: rtype.into(),
        id: id.into(),
        resource: r,
        if_match: None,
    }
}
