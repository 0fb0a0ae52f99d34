//! The CapabilityStatement, generated from the same tables that drive routing
//! and search, so it lists exactly what the server does.

use hale_fhir::search::{common_params, is_supported, search_params, ParamKind};
use hale_fhir::ResourceType;
use serde_json::{json, Value};

/// Interactions on a client-writable type.
pub const WRITE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];
/// Interactions on a server-written type (AuditEvent).
pub const READ_INTERACTIONS: &[&str] = &["read", "vread", "search-type"];

/// Parameters every type accepts.
pub const COMMON_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the resource"),
    ("_lastUpdated", "date", "When the resource version last changed"),
    ("_tag", "token", "Tags in meta.tag (e.g. downtime-backfill)"),
];

pub fn capability_statement(base: &str, date: &str, security: Value) -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|&rt| {
            let interactions = if rt.client_writable() {
                WRITE_INTERACTIONS
            } else {
                READ_INTERACTIONS
            };
            let mut params: Vec<Value> = Vec::new();
            let mut includes: Vec<String> = Vec::new();
            for p in common_params().iter().chain(search_params(rt)) {
                if !is_supported(rt, p.name) {
                    continue;
                }
                let documentation = COMMON_PARAMS
                    .iter()
                    .find(|(n, _, _)| *n == p.name)
                    .map_or(p.path, |(_, _, d)| d);
                params.push(json!({
                    "name": p.name,
                    "definition": p.url,
                    "type": p.kind.as_str(),
                    "documentation": documentation,
                }));
                if p.kind == ParamKind::Reference && rt != ResourceType::AuditEvent {
                    includes.push(format!("{rt}:{}", p.name));
                }
            }
            let mut r = json!({
                "type": rt.as_str(),
                "interaction": interactions.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": rt.client_writable(),
                "updateCreate": rt.client_writable(),
                "conditionalCreate": rt.client_writable(),
                "conditionalUpdate": rt.client_writable(),
                "conditionalDelete": if rt.client_writable() { "single" } else { "not-supported" },
                "searchParam": params,
            });
            if !includes.is_empty() {
                r["searchInclude"] = json!(includes);
            }
            let mut operations = vec![json!({
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            })];
            if rt == ResourceType::Appointment {
                operations.push(json!({"name": "postpone", "definition": "https://hale.health/fhir/OperationDefinition/Appointment-postpone"}));
                operations.push(json!({"name": "rebook", "definition": "https://hale.health/fhir/OperationDefinition/Appointment-rebook"}));
            }
            if rt == ResourceType::Basic {
                operations.push(json!({"name": "report", "definition": "https://hale.health/fhir/OperationDefinition/Basic-report"}));
            }
            if rt == ResourceType::Patient {
                operations.push(json!({
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                }));
                operations.push(json!({
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
                }));
                operations.push(json!({
                    "name": "break-glass",
                    "definition": "https://hale.health/fhir/OperationDefinition/Patient-break-glass",
                    "documentation": "POST Patient/{id}/$break-glass with a Parameters resource holding `reason` (at least 10 characters): a clinician without a legitimate relationship opens this patient's clinical record for a limited time (access.break_glass_hours). Each access it allows is audited with purpose BTG and the reason, for a privacy officer to review."
                }));
            }
            if rt == ResourceType::Group {
                operations.push(json!({
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
                }));
            }
            r["operation"] = json!(operations);
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Hale",
        "kind": "instance",
        "software": {"name": "Hale", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Hale clinical record and booking server", "url": base},
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
            }],
        }]
    })
}
