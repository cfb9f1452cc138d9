//! The messages probe of `portico check`: the official test script's sequence, so a cron line
//! or systemd timer can restart a service that fails it. Safe to repeat forever against the
//! same store: posting a message again is not an error and answers the same digest.
//!
//! 1. `GET /messages/aaaa...a` (64 `a`) -> 404
//! 2. `POST {"message": "foo"}` -> 201 with foo's SHA-256
//! 3. `GET` that digest -> `"foo"`
//! 4. `POST "bar"` -> 201, 5. `GET` -> `"bar"`, 6. `GET` foo's digest again -> `"foo"`

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::{send_text, unexpected, url, CheckError, Target};

/// Checks the messages service end to end; pushes one line per step to `done`.
pub async fn probe(target: &Target, done: &mut Vec<String>) -> Result<(), CheckError> {
    expect_absent(target, done, &"a".repeat(64)).await?;
    // `post` checks each digest is the message's SHA-256 (for foo, the official test's).
    let foo_digest = post(target, done, "foo").await?;
    expect_message(target, done, &foo_digest, "foo").await?;
    let bar_digest = post(target, done, "bar").await?;
    expect_message(target, done, &bar_digest, "bar").await?;
    expect_message(target, done, &foo_digest, "foo").await
}

/// `GET /messages/{digest}` must answer 404.
async fn expect_absent(
    target: &Target,
    done: &mut Vec<String>,
    digest: &str,
) -> Result<(), CheckError> {
    let url = url(target, &format!("/messages/{digest}"));
    let (status, _) = json(&url, target.client.get(&url)).await?;
    if status != StatusCode::NOT_FOUND {
        return Err(unexpected(
            "messages",
            format!("GET {url} answered {status}, expected 404"),
        ));
    }
    done.push(format!("{url} correctly not found"));
    Ok(())
}

/// `POST /messages` must answer 201 with the message's SHA-256; returns the digest.
async fn post(
    target: &Target,
    done: &mut Vec<String>,
    message: &str,
) -> Result<String, CheckError> {
    let url = url(target, "/messages");
    let request = target
        .client
        .post(&url)
        .json(&serde_json::json!({ "message": message }));
    let (status, body) = json(&url, request).await?;
    if status != StatusCode::CREATED {
        return Err(unexpected(
            "messages",
            format!("POST {url} answered {status}, expected 201: {body}"),
        ));
    }
    let digest = body["digest"].as_str().unwrap_or_default().to_string();
    let expected = hex::encode(Sha256::digest(message.as_bytes()));
    if digest != expected {
        return Err(unexpected(
            "messages",
            format!("POST {message:?} to {url} answered digest {digest:?}, expected {expected}"),
        ));
    }
    done.push(format!("{url} POSTed {message:?} successfully"));
    Ok(digest)
}

/// `GET /messages/{digest}` must answer 200 with `message`.
async fn expect_message(
    target: &Target,
    done: &mut Vec<String>,
    digest: &str,
    message: &str,
) -> Result<(), CheckError> {
    let url = url(target, &format!("/messages/{digest}"));
    let (status, body) = json(&url, target.client.get(&url)).await?;
    if status != StatusCode::OK || body["message"] != message {
        return Err(unexpected(
            "messages",
            format!("GET {url} answered {status} {body}, expected 200 with message {message:?}"),
        ));
    }
    done.push(format!("{url} correctly found"));
    Ok(())
}

/// Sends the request; returns the status and the JSON body (`null` when it is not JSON).
async fn json(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, serde_json::Value), CheckError> {
    let (status, text) = send_text("messages", url, request).await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}
