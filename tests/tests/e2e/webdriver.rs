//! A small WebDriver client (the W3C protocol over HTTP, with ureq) driving
//! Debian's `chromium` through its `chromedriver`, both started by the
//! test: sessions, navigation, elements, clicks, keys, scripts, cookies
//! and screenshots. Waits are conditions polled until a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::support::{free_addr, lines_of, DEADLINE};

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The longest a wait goes without checking its condition again, when the
/// page does not change (what it waits for may not be in the DOM: the URL,
/// a cookie).
const CHANGE_BOUND: Duration = Duration::from_millis(500);

/// Where Debian puts the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver, killed on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is
    /// ready.
    pub fn start() -> Result<Driver> {
        for needed in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(needed).exists() {
                bail!("{needed} is missing: install Debian's chromium and chromium-driver (.ci/run does)");
            }
        }
        let addr = free_addr()?;
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let lines = lines_of(child.stdout.take().context("chromedriver's output")?);
        let driver = Driver { child, addr };
        // It says when it listens.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("started successfully") => return Ok(driver),
                Ok(_) => {}
                Err(_) => bail!("chromedriver never said it was started"),
            }
        }
    }

    /// A new headless browser of `width` × `height` CSS pixels, its
    /// profile in `profile`.
    pub fn browser(&self, width: u32, height: u32, profile: &Path) -> Result<Browser> {
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        // The screen is emulated: a window is never narrower than the
        // browser allows, and its frame takes from its height.
        let phone = width < 600;
        options["mobileEmulation"] = json!({"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 1.0, "mobile": phone, "touch": phone,
        }});
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let answer = post(&format!("http://{}/session", self.addr), &capabilities)?;
        let id = answer["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session: {answer}"))?
            .to_string();
        Ok(Browser {
            base: format!("http://{}/session/{id}", self.addr),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `body` as JSON; the answer's `value`, or what went wrong.
fn json_request(request: ureq::Request, body: &Value) -> Result<Value> {
    let url = request.url().to_string();
    answer(
        request
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
        &url,
    )
}

fn post(url: &str, body: &Value) -> Result<Value> {
    json_request(ureq::post(url), body)
}

fn answer(sent: Result<ureq::Response, ureq::Error>, url: &str) -> Result<Value> {
    match sent {
        Ok(r) => Ok(serde_json::from_str(&r.into_string()?)?),
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r
                .into_string()
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            bail!("{url}: {code} {}", body["value"]["message"])
        }
        Err(e) => Err(e).context(url.to_string()),
    }
}

/// One browser session.
pub struct Browser {
    base: String,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let answered = match body {
            Some(body) => json_request(ureq::request(method, &url), &body)?,
            None => answer(ureq::request(method, &url).call(), &url)?,
        };
        Ok(answered["value"].clone())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// The page's URL.
    pub fn url(&self) -> Result<String> {
        Ok(self.call("GET", "/url", None)?.as_str().unwrap_or_default().to_string())
    }

    /// Runs `script` (a function body) with `args`; its return value.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// The first element under `css`, if there is one now.
    pub fn find(&self, css: &str) -> Result<Option<Element>> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(found
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .map(|id| Element(id.to_string())))
    }

    /// Waits until the page changes (any node, text or attribute, or a
    /// new page), at most `bound`: what a wait re-checks its condition on.
    fn next_change(&self, bound: Duration) {
        let script = "const done = arguments[arguments.length - 1]; \
            const seen = new MutationObserver(() => { seen.disconnect(); done(true); }); \
            seen.observe(document, {subtree: true, childList: true, characterData: true, attributes: true}); \
            setTimeout(() => { seen.disconnect(); done(false); }, arguments[0]);";
        // A page left while waiting ends the script with an error: a change.
        let _ = self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": [bound.as_millis() as u64]})),
        );
    }

    /// Waits until an element under `css` is there and `ok` holds of its
    /// text; that element. Checked again on every change of the page.
    pub fn wait_for(&self, css: &str, ok: impl Fn(&str) -> bool) -> Result<Element> {
        let deadline = Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            if let Some(e) = self.find(css)? {
                // The element may be replaced between finding and reading.
                if let Ok(text) = self.text(&e) {
                    if ok(&text) {
                        return Ok(e);
                    }
                    last = text;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{css} never showed what was waited for (last: {last:?}) at {}",
                    self.url()?
                );
            }
            self.next_change(CHANGE_BOUND);
        }
    }

    /// Waits until `script` returns true, checked on every change of the
    /// page.
    pub fn wait_until(&self, what: &str, script: &str) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.execute(script, &[])? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("never: {what}");
            }
            self.next_change(CHANGE_BOUND);
        }
    }

    /// The element's rendered text.
    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .call("GET", &format!("/element/{}/text", e.0), None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Clicks it.
    pub fn click(&self, e: &Element) -> Result<()> {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({})))?;
        Ok(())
    }

    /// Types `keys` into it.
    pub fn type_into(&self, e: &Element, keys: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": keys })),
        )?;
        Ok(())
    }

    /// The page's cookie `name`, `HttpOnly` ones too.
    pub fn cookie(&self, name: &str) -> Result<Option<String>> {
        let cookies = self.call("GET", "/cookie", None)?;
        Ok(cookies.as_array().and_then(|all| {
            all.iter()
                .find(|c| c["name"] == name)
                .and_then(|c| c["value"].as_str())
                .map(str::to_string)
        }))
    }

    /// Saves a PNG of what the page shows to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", None)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// Logs `name` in with `password` at `web`'s login page.
    pub fn log_in(&self, web: SocketAddr, name: &str, password: &str) -> Result<()> {
        self.goto(&format!("http://{web}/login"))?;
        let field = |css: &str| self.find(css)?.ok_or_else(|| anyhow!("no {css} on the login page"));
        self.type_into(&field("input[name=name]")?, name)?;
        self.type_into(&field("input[name=password]")?, password)?;
        self.click(&field("button[type=submit]")?)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
    }
}
