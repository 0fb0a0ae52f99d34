//! Search parameter tables, extraction and query parsing (implementation).
use crate::outcome::Issue;
use crate::resource_type::ResourceType;
use crate::search::*;
use serde_json::Value;

pub(crate) fn params_for(_rtype: ResourceType) -> &'static [SearchParamDef] {
    todo!()
}
pub(crate) fn find(_rtype: ResourceType, _name: &str) -> Option<&'static SearchParamDef> {
    todo!()
}
pub(crate) fn extract(_rtype: ResourceType, _resource: &Value) -> Vec<IndexEntry> {
    todo!()
}
pub(crate) fn parse(
    _rtype: ResourceType,
    _pairs: &[(String, String)],
    _strict: bool,
) -> Result<SearchQuery, Issue> {
    todo!()
}
