//! Who may call what: the OAuth scope each RPC needs, and which rate limit
//! it counts against. Part of the contract (README, "Authentication"), so
//! every server enforces it and every client can read it here.

/// Scope to upload and render images (`Optimizer.Optimize`, `Render`,
/// `Storage.Put`, `POST /v1/watermark`).
pub const IMAGES_WRITE: &str = "images:write";
/// Scope to read images and their descriptions (`Storage.Get`, `Stat`,
/// `Optimizer.Probe`, `GET /v1/images/{key}`).
pub const IMAGES_READ: &str = "images:read";
/// Scope to remove stored objects (`Storage.Delete`).
pub const STORAGE_ADMIN: &str = "storage:admin";
/// Scope to list and replay dead-lettered jobs (`/v1/admin/dead-jobs`).
pub const JOBS_ADMIN: &str = "jobs:admin";
/// Scope to scrape `/metrics` on a public port.
pub const METRICS_READ: &str = "metrics:read";

/// Which token bucket a call draws from: uploads cost a render, reads
/// mostly a cache hit, so each has its own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    Upload,
    Read,
}

impl RateClass {
    /// The name in `RateLimit-Policy` headers and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RateClass::Upload => "upload",
            RateClass::Read => "read",
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes and descriptions of the API: no token, no limit.
    Open,
    /// A token carrying `scope` (when authentication is on), and a token
    /// from `class`'s bucket (when rate limits are on).
    Scoped { scope: &'static str, class: RateClass },
}

impl Access {
    pub const WRITE: Access = Access::Scoped {
        scope: IMAGES_WRITE,
        class: RateClass::Upload,
    };
    pub const READ: Access = Access::Scoped {
        scope: IMAGES_READ,
        class: RateClass::Read,
    };
    pub const ADMIN: Access = Access::Scoped {
        scope: STORAGE_ADMIN,
        class: RateClass::Upload,
    };
}

/// Whether a token holding `scopes` may do what `needed` allows. Writing
/// implies reading: a render reads the original it was given, so an
/// uploader's token, forwarded, must be able to.
pub fn grants<S: AsRef<str>>(scopes: &[S], needed: &str) -> bool {
    scopes
        .iter()
        .map(AsRef::as_ref)
        .any(|held| held == needed || (needed == IMAGES_READ && held == IMAGES_WRITE))
}

/// The access a gRPC method of `watermark.v1` needs, by its path
/// (`/watermark.v1.Storage/Delete`); `None` for a method not in the API.
pub fn for_method(path: &str) -> Option<Access> {
    let access = match path {
        "/watermark.v1.Optimizer/Optimize"
        | "/watermark.v1.Optimizer/Render"
        | "/watermark.v1.Storage/Put" => Access::WRITE,
        "/watermark.v1.Optimizer/Probe" | "/watermark.v1.Storage/Get" | "/watermark.v1.Storage/Stat" => {
            Access::READ
        }
        "/watermark.v1.Storage/Delete" => Access::ADMIN,
        _ => return None,
    };
    Some(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC in the descriptors has an entry, so a new one cannot ship
    /// unguarded by mistake.
    #[test]
    fn every_method_has_an_access_rule() {
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptors decode");
        let mut seen = 0;
        for file in set.file.iter().filter(|f| f.package() == "watermark.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/watermark.v1.{}/{}", service.name(), method.name());
                    assert!(for_method(&path).is_some(), "{path} has no access rule");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 7);
        assert_eq!(for_method("/watermark.v1.Storage/Delete"), Some(Access::ADMIN));
        assert_eq!(for_method("/grpc.health.v1.Health/Check"), None);
        assert!(grants(&["images:write"], IMAGES_READ));
        assert!(!grants(&["images:read"], IMAGES_WRITE));
        assert!(!grants(&["images:write"], STORAGE_ADMIN));
    }
}
