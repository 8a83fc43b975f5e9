//! Placeholder until the key module lands.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
pub fn generate_signing_key() -> Result<ed25519_dalek::SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Io(std::io::Error::other(e.to_string())))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}
pub fn write_key_file(path: &std::path::Path, key: &ed25519_dalek::SigningKey) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(&key.to_bytes())?;
    Ok(())
}
