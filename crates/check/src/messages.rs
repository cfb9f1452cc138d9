//! The messages probe of `portico check`.

use crate::{CheckError, Target};

/// Checks the messages service end to end; pushes one line per step to `done`.
pub async fn probe(_target: &Target, _done: &mut Vec<String>) -> Result<(), CheckError> {
    Ok(())
}
