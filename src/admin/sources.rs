//! `/v1/sources`: the inbound sources (SPEC 10) in their bucket
//! ([`crate::source_store`]), served by the registries' handlers
//! ([`super::registries`]): the same bodies, revisions, `***` markers and
//! errors, a source in place of a registry.

use super::AdminState;
use super::registries::Managed;
use crate::registry_store::KvStore;
use crate::source::SourceConfig;

impl Managed for SourceConfig {
    fn store(st: &AdminState) -> &KvStore<Self> {
        st.sources()
    }
    const DELETED: &'static str = "source deleted: its route answers 404 from now on; \
        what it sent stays in ORDERS and its history in the source bucket";
}
