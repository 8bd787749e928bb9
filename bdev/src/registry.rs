//! The registry of bdevs by name: creation order (for `save_config`),
//! claims (a member of a RAID, the base of an error bdev, the bdev behind a
//! vhost controller or a LUN) and safe deletion.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::Bdev;

/// Registry errors, with messages meant for RPC clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The name is taken.
    #[error("bdev `{0}` already exists")]
    Exists(String),
    /// No such bdev.
    #[error("bdev `{0}` does not exist")]
    NotFound(String),
    /// Claimed by another user.
    #[error("bdev `{name}` is in use by `{by}`")]
    InUse {
        /// The bdev.
        name: String,
        /// Who holds it.
        by: String,
    },
}

struct Entry {
    bdev: Arc<dyn Bdev>,
    method: String,
    params: Value,
    claimed_by: Option<String>,
}

/// All bdevs of a daemon.
#[derive(Default)]
pub struct BdevRegistry {
    entries: Mutex<Vec<Entry>>,
}

impl BdevRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `name` is free and `bases` exist and are unclaimed.
    pub fn check_new(&self, name: &str, bases: &[String]) -> Result<(), RegistryError> {
        let e = self.lock();
        Self::check_locked(&e, name, bases)
    }

    fn check_locked(e: &[Entry], name: &str, bases: &[String]) -> Result<(), RegistryError> {
        if e.iter().any(|x| x.bdev.info().name == name) {
            return Err(RegistryError::Exists(name.to_string()));
        }
        for b in bases {
            match e.iter().find(|x| x.bdev.info().name == *b) {
                None => return Err(RegistryError::NotFound(b.clone())),
                Some(x) => {
                    if let Some(by) = &x.claimed_by {
                        return Err(RegistryError::InUse {
                            name: b.clone(),
                            by: by.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds a bdev, recording the call that created it and claiming its
    /// bases for it.
    pub fn add(
        &self,
        bdev: Arc<dyn Bdev>,
        method: &str,
        params: Value,
    ) -> Result<(), RegistryError> {
        let mut e = self.lock();
        let name = bdev.info().name.clone();
        let bases = bdev.base_bdevs();
        Self::check_locked(&e, &name, &bases)?;
        for x in e.iter_mut().filter(|x| bases.contains(&x.bdev.info().name)) {
            x.claimed_by = Some(name.clone());
        }
        e.push(Entry {
            bdev,
            method: method.to_string(),
            params,
            claimed_by: None,
        });
        tracing::info!(bdev = %name, method, "bdev created");
        Ok(())
    }

    /// Looks a bdev up.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Bdev>, RegistryError> {
        self.lock()
            .iter()
            .find(|x| x.bdev.info().name == name)
            .map(|x| Arc::clone(&x.bdev))
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// Claims a bdev for a non-bdev user (a vhost controller, a LUN, a
    /// module adding a member at run time).
    pub fn claim(&self, name: &str, by: &str) -> Result<Arc<dyn Bdev>, RegistryError> {
        let mut e = self.lock();
        let x = e
            .iter_mut()
            .find(|x| x.bdev.info().name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if let Some(holder) = &x.claimed_by {
            return Err(RegistryError::InUse {
                name: name.to_string(),
                by: holder.clone(),
            });
        }
        x.claimed_by = Some(by.to_string());
        Ok(Arc::clone(&x.bdev))
    }

    /// Releases a claim held by `by` (no-op if `by` does not hold it).
    pub fn release(&self, name: &str, by: &str) {
        let mut e = self.lock();
        if let Some(x) = e.iter_mut().find(|x| x.bdev.info().name == name) {
            if x.claimed_by.as_deref() == Some(by) {
                x.claimed_by = None;
            }
        }
    }

    /// Who claims `name`, if anyone.
    pub fn claimed_by(&self, name: &str) -> Option<String> {
        self.lock()
            .iter()
            .find(|x| x.bdev.info().name == name)
            .and_then(|x| x.claimed_by.clone())
    }

    /// Removes a bdev that nobody claims, releasing its bases.
    pub fn remove(&self, name: &str) -> Result<Arc<dyn Bdev>, RegistryError> {
        let mut e = self.lock();
        let i = e
            .iter()
            .position(|x| x.bdev.info().name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        if let Some(by) = &e[i].claimed_by {
            return Err(RegistryError::InUse {
                name: name.to_string(),
                by: by.clone(),
            });
        }
        let entry = e.remove(i);
        for b in entry.bdev.base_bdevs() {
            if let Some(x) = e.iter_mut().find(|x| x.bdev.info().name == b) {
                if x.claimed_by.as_deref() == Some(name) {
                    x.claimed_by = None;
                }
            }
        }
        drop(e);
        entry.bdev.shutdown();
        tracing::info!(bdev = %name, "bdev deleted");
        Ok(entry.bdev)
    }

    /// All bdevs in creation order.
    pub fn list(&self) -> Vec<Arc<dyn Bdev>> {
        self.lock().iter().map(|x| Arc::clone(&x.bdev)).collect()
    }

    /// The creating calls, in creation order: replaying them rebuilds the
    /// same bdevs (bases always precede their users).
    pub fn creation_calls(&self) -> Vec<(String, Value)> {
        self.lock()
            .iter()
            .map(|x| (x.method.clone(), x.params.clone()))
            .collect()
    }

    /// Updates the recorded parameters of a bdev (e.g. after members change).
    pub fn set_params(&self, name: &str, params: Value) {
        if let Some(x) = self.lock().iter_mut().find(|x| x.bdev.info().name == name) {
            x.params = params;
        }
    }

    /// Removes everything, users before bases (shutdown).
    pub fn clear(&self) {
        let mut e = self.lock();
        while let Some(x) = e.pop() {
            x.bdev.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{malloc, null};

    #[test]
    fn names_claims_and_deletion() {
        let r = BdevRegistry::new();
        let a: Arc<dyn Bdev> = Arc::new(malloc::create("a", 64, 512).unwrap());
        r.add(a, "bdev_malloc_create", serde_json::json!({"name": "a"}))
            .unwrap();
        let dup: Arc<dyn Bdev> = Arc::new(null::create("a", 64, 512).unwrap());
        assert_eq!(
            r.add(dup, "x", Value::Null),
            Err(RegistryError::Exists("a".into()))
        );
        assert_eq!(
            r.get("zz").err(),
            Some(RegistryError::NotFound("zz".into()))
        );
        r.claim("a", "vhost0").unwrap();
        assert_eq!(
            r.remove("a").err().unwrap().to_string(),
            "bdev `a` is in use by `vhost0`"
        );
        assert!(r.claim("a", "other").is_err());
        r.release("a", "other");
        assert_eq!(r.claimed_by("a").as_deref(), Some("vhost0"));
        r.release("a", "vhost0");
        assert!(r.remove("a").is_ok());
        assert!(r.list().is_empty());
    }
}
