//! The fib probe of `portico check`: `GET /fib/10` must answer 200 with the original's exact
//! body, which exercises parsing, the number cache (or the back ends) and the layout at once.

use crate::{send_text, unexpected, url, CheckError, Target};

/// The one answer the probe accepts for `/fib/10`.
pub const EXPECTED_FIB_10: &str = "{\n  \"N\": 10,\n  \"result\": \"0 1 1 2 3 5 8 13 21 34\"\n}";

/// Checks the fib service end to end; pushes one line per step to `done`.
pub async fn probe(target: &Target, done: &mut Vec<String>) -> Result<(), CheckError> {
    let what = "fib";
    let url = url(target, "/fib/10");
    let (status, body) = send_text(what, &url, target.client.get(&url)).await?;
    if status != reqwest::StatusCode::OK {
        return Err(unexpected(what, format!("{url} answered {status}: {body}")));
    }
    if body != EXPECTED_FIB_10 {
        return Err(unexpected(
            what,
            format!("{url} answered an unexpected body: {body:?}"),
        ));
    }
    done.push(format!(
        "{url} answered the first 10 Fibonacci numbers exactly"
    ));
    Ok(())
}
