//! Placeholder for the persister module being written on branch w3-pgpersist; only the fence.

/// The leadership a persister's commits are fenced by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The active server's node id.
    pub node: String,
    /// Its leadership epoch.
    pub epoch: i64,
}

/// Placeholder until the real persister is merged.
pub struct PgPersister;

impl PgPersister {
    /// Placeholder.
    pub fn connect(
        _options: &crate::PgOptions,
        _fence: Option<Fence>,
    ) -> Result<PgPersister, baton_store::StoreError> {
        Err(baton_store::StoreError::Unavailable("not merged yet".into()))
    }
}

impl baton_store::Persister for PgPersister {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn load(&mut self) -> Result<baton_core::Snapshot, baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
    fn commit(&mut self, _: &[baton_core::Change]) -> Result<(), baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
    fn put_key(&mut self, _: &baton_store::ApiKey) -> Result<(), baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
    fn keys(&mut self) -> Result<Vec<baton_store::ApiKey>, baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
    fn append_audit(
        &mut self,
        _: &baton_store::AuditEntry,
    ) -> Result<baton_store::AuditEntry, baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
    fn audit(
        &mut self,
        _: Option<u64>,
        _: usize,
    ) -> Result<Vec<baton_store::AuditEntry>, baton_store::PersistError> {
        Err(baton_store::PersistError("x".into()))
    }
}
