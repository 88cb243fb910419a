//! Files only their owner may read, written durably.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` (created or truncated) with mode 0600, and syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory, so a rename or link in it survives a crash (a warning on failure).
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "syncing the directory failed");
    }
    #[cfg(not(unix))]
    let _ = dir;
}
