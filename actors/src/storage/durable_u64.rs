//! One u64 in a small file of its own, replaced atomically and durably (write a temporary
//! file, fsync it, rename it over the old one, fsync the folder).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The number stored at `path`, or `None` when the file does not exist.
pub fn read(path: &Path) -> io::Result<Option<u64>> {
    match fs::read(path) {
        Ok(b) => b
            .as_slice()
            .try_into()
            .map(|b| Some(u64::from_le_bytes(b)))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged", path.display()),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores `value` at `path`; once this returns, a crash leaves either the old or the new
/// value, never a torn one.
pub fn write(path: &Path, value: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&value.to_le_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, 42).unwrap();
        assert_eq!(read(&path).unwrap(), Some(42));
        fs::write(&path, b"abc").unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
