//! The web app: what the people of the chain see and do in a browser, on
//! the broker's web listener — head office's table of every store, a
//! store's stock and dishes, the manager's phone view, the kitchen's
//! one-tap view and the floor board.
//!
//! - [`users`]: `[[users]]`, each acting as the device role of their job;
//! - [`sessions`]: logins, their cookies and CSRF tokens;
//! - `live`: a page's server-sent events of the documents the broker
//!   publishes;
//! - `pages`: the HTML of each page (escaped), in English or Chinese;
//! - `assets/`: the page script and style, embedded in the binary.
//!
//! A page is a shell; its script renders the documents its live stream
//! brings, as text. Every tap is an input with an id the page makes,
//! posted to `/act/{topic}` and decided on the path every input takes
//! (`api::inputs::submit_as`, as the person's identity), so a double tap or
//! a retry is applied once; the answer comes after the commit. Every POST
//! carries the session's CSRF token; the session cookie is `HttpOnly`,
//! `SameSite=Strict`.

mod live;
mod pages;
pub mod sessions;
pub mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use dishsync_protocol::{DeviceId, StoreId, Topic};
use serde::Deserialize;
use tracing::{info, warn};

use crate::acl::Identity;
use crate::api::{Api, Slot};
use crate::auth::FailureBrake;
use pages::{Lang, View};
use sessions::{Session, Sessions};
use users::User;

use crate::current::Current;

/// The session cookie.
const SESSION_COOKIE: &str = "dishsync_session";
/// The login form's double-submit cookie.
const LOGIN_COOKIE: &str = "dishsync_login";
/// The language a person chose.
const LANG_COOKIE: &str = "dishsync_lang";
/// The header a page sends its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";
/// The longest tap body.
const MAX_TAP: usize = 16 * 1024;

/// How the web app is set up (`[web]`, `[[users]]`).
#[derive(Debug, Clone)]
pub struct WebApp {
    /// Who may log in.
    pub users: Vec<User>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Whether the floor board needs no login.
    pub floor_public: bool,
    /// Whether cookies are sent over TLS only (the listener serves TLS).
    pub secure_cookies: bool,
}

impl Default for WebApp {
    fn default() -> WebApp {
        WebApp {
            users: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            floor_public: false,
            secure_cookies: false,
        }
    }
}

/// What the web app serves from, beside the API.
pub struct People {
    /// Who may log in, as the configuration says now: a reload that drops
    /// a person ends their sessions at their next request.
    users: Current<HashMap<DeviceId, User>>,
    sessions: Sessions,
    brake: FailureBrake,
    floor_public: bool,
    /// `; Secure` on every cookie, or nothing.
    secure: &'static str,
}

impl People {
    /// The web app of `app`, with logins braked like devices'
    /// (`failures_per_minute` per address) and sessions kept in `store`.
    pub fn new(app: &WebApp, failures_per_minute: u32, store: crate::store::Store) -> People {
        People {
            users: Current::new(users_by_name(app)),
            sessions: Sessions::new(app.session_ttl, Some(store)),
            brake: FailureBrake::new(failures_per_minute),
            floor_public: app.floor_public,
            secure: if app.secure_cookies { "; Secure" } else { "" },
        }
    }

    /// Who may log in from now on: `app`'s users (the rest of `app` is
    /// read at start only).
    pub fn reload_users(&self, app: &WebApp) {
        self.users.set(users_by_name(app));
    }

    /// Sessions open now.
    pub fn sessions_open(&self) -> usize {
        self.sessions.open(dishsync_protocol::payload::Timestamp::now().0)
    }
}

fn users_by_name(app: &WebApp) -> HashMap<DeviceId, User> {
    app.users.iter().map(|u| (u.name.clone(), u.clone())).collect()
}

/// The routes of the web app, serving from `slot` once it is filled.
pub fn router(slot: Slot) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/lang/{lang}", get(choose_lang))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript", pages::APP_JS) }),
        )
        .route("/assets/app.css", get(|| async { asset("text/css", pages::APP_CSS) }))
        .route("/hq", get(hq_page))
        .route("/stores/{store}", get(store_page))
        .route("/stores/{store}/{view}", get(view_page))
        .route("/live/hq", get(live_hq))
        .route("/live/stores/{store}/{view}", get(live_store))
        .route("/app/stores/{store}/alerts", get(alerts))
        .route("/app/stores/{store}/today", get(today))
        .route("/act/{*topic}", post(act))
        .with_state(slot)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// The broker is still restoring its state.
struct Starting;

impl IntoResponse for Starting {
    fn into_response(self) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the broker is starting; try again in a moment",
        )
            .into_response()
    }
}

/// The API and the web app, once the state is restored.
fn ready(slot: &Slot) -> Result<(&Api, &People), Starting> {
    slot.get()
        .and_then(|api| api.people().map(|p| (api, p)))
        .ok_or(Starting)
}

/// A cookie of the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The language of the request: the person's choice, else the browser's.
fn lang(headers: &HeaderMap) -> Lang {
    if let Some(chosen) = cookie(headers, LANG_COOKIE).and_then(Lang::parse) {
        return chosen;
    }
    let accepted = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match accepted.split(',').next().map(|l| l.trim().to_ascii_lowercase()) {
        Some(l) if l.starts_with("zh") => Lang::Zh,
        _ => Lang::En,
    }
}

/// The person logged in, with their session and its token.
fn person(people: &People, headers: &HeaderMap) -> Option<(User, Session, String)> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let session = people
        .sessions
        .find(token, dishsync_protocol::payload::Timestamp::now().0)?;
    let user = people.users.get().get(&session.user)?.clone();
    Some((user, session, token.to_string()))
}

/// To the login page, coming back to `next` after.
fn to_login(next: &str) -> Response {
    let next = pages::url_escape(next);
    Redirect::to(&format!("/login?next={next}")).into_response()
}

/// Where a person starts: HQ's table, or their first store's view for
/// their job.
fn home_of(user: &User, api: &Api) -> String {
    if user.role.is_chain_wide() {
        return "/hq".into();
    }
    let first = user.stores_of(api.catalog().stores().map(|s| &s.id)).into_iter().next();
    match (first, user.role) {
        (None, _) => "/logout".into(),
        (Some(s), users::PersonRole::StoreManager) => format!("/stores/{s}/manager"),
        (Some(s), users::PersonRole::Chef) => format!("/stores/{s}/kitchen"),
        (Some(s), _) => format!("/stores/{s}/floor"),
    }
}

async fn home(State(slot): State<Slot>, headers: HeaderMap) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    match person(people, &headers) {
        Some((user, _, _)) => Redirect::to(&home_of(&user, api)).into_response(),
        None => to_login("/"),
    }
}

/// The login page's query.
#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Where a login may send a person on to: a path of this site only.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

fn login_form(slot: &Slot, headers: &HeaderMap, next: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let secure = secure_of(slot);
    let Some(token) = sessions::random_token() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let html = pages::login(lang(headers), &token, next, problem);
    let mut response = (status, pages::html_headers(), html).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/login; Max-Age=3600{secure}"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

async fn login_page(State(slot): State<Slot>, Query(q): Query<NextQuery>, headers: HeaderMap) -> Response {
    login_form(&slot, &headers, safe_next(q.next.as_deref()), None, StatusCode::OK)
}

/// `; Secure` when the listener serves TLS, for every cookie.
fn secure_of(slot: &Slot) -> &'static str {
    slot.get().and_then(|api| api.people()).map_or("", |p| p.secure)
}

/// The login form.
#[derive(Debug, Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(
    State(slot): State<Slot>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let next = safe_next(form.next.as_deref()).to_string();
    let lang = lang(&headers);
    // The form's token must be the one its page set: no login from
    // another site's form.
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| sessions::same_token(c, &form.csrf)) {
        return login_form(
            &slot,
            &headers,
            &next,
            Some(pages::text(lang, "login_expired")),
            StatusCode::FORBIDDEN,
        );
    }
    let ip = peer.ip();
    if people.brake.blocked(ip) {
        warn!(%ip, "web login refused: too many failed logins from this address");
        return login_form(
            &slot,
            &headers,
            &next,
            Some(pages::text(lang, "too_many")),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let user = DeviceId::new(form.name.trim())
        .ok()
        .and_then(|name| people.users.get().get(&name).cloned());
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let password = form.password.into_bytes();
    // The hash is checked for an unknown name too, so that the answer
    // takes as long and says the same.
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => crate::auth::verify(&password, &hash),
        None => {
            let _ = crate::auth::hash_password("not a user");
            false
        }
    })
    .await
    .unwrap_or(false);
    let user = match (user, ok) {
        (Some(user), true) => user,
        _ => {
            warn!(%ip, name = %form.name.trim(), "web login refused: wrong name or password");
            people.brake.failed(ip);
            return login_form(
                &slot,
                &headers,
                &next,
                Some(pages::text(lang, "wrong_password")),
                StatusCode::UNAUTHORIZED,
            );
        }
    };
    // Kept durably: off the async threads.
    let (kept, name) = (slot.clone(), user.name.clone());
    let now = dishsync_protocol::payload::Timestamp::now().0;
    let started = tokio::task::spawn_blocking(move || {
        ready(&kept)
            .ok()
            .and_then(|(_, people)| people.sessions.start(name, now))
    })
    .await;
    let Ok(Some((token, _))) = started else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    info!(user = %user.name, role = user.role.as_str(), %ip, "logged in to the web app");
    let to = if next == "/" { home_of(&user, api) } else { next };
    let mut response = Redirect::to(&to).into_response();
    let max_age = people.sessions.ttl().as_secs();
    for cookie in [
        format!(
            "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
            people.secure
        ),
        format!(
            "{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0{}",
            people.secure
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// The logout form.
#[derive(Debug, Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(State(slot): State<Slot>, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Response {
    let (_, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    if let Some((user, session, token)) = person(people, &headers) {
        if !sessions::same_token(&session.csrf, &form.csrf) {
            return (
                StatusCode::FORBIDDEN,
                "the page's token is not this session's: reload it",
            )
                .into_response();
        }
        let kept = slot.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok((_, people)) = ready(&kept) {
                people.sessions.end(&token);
            }
        })
        .await;
        info!(user = %user.name, "logged out of the web app");
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        people.secure
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

async fn choose_lang(State(slot): State<Slot>, Path(chosen): Path<String>, Query(q): Query<NextQuery>) -> Response {
    let lang = Lang::parse(&chosen).unwrap_or(Lang::En);
    let mut response = Redirect::to(safe_next(q.next.as_deref())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; SameSite=Strict; Path=/; Max-Age=31536000{}",
        lang.as_str(),
        secure_of(&slot)
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// 403 in the person's language.
fn forbidden(lang: Lang) -> Response {
    (StatusCode::FORBIDDEN, pages::html_headers(), pages::refused(lang)).into_response()
}

/// The identity a page of `view` acts as in `store`, if the person may
/// open it: they belong there and may read what the view is made of.
fn viewer(user: &User, view: View, store: Option<&StoreId>) -> Option<Identity> {
    let identity = user.identity(store)?;
    let main = view.main_filter(store);
    identity.may_subscribe(&main).ok()?;
    Some(identity)
}

async fn hq_page(State(slot): State<Slot>, headers: HeaderMap) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let Some((user, session, _)) = person(people, &headers) else {
        return to_login("/hq");
    };
    if !user.role.is_chain_wide() || viewer(&user, View::Hq, None).is_none() {
        return forbidden(lang(&headers));
    }
    page(api, &user, Some(&session), View::Hq, None, &headers)
}

async fn store_page(State(slot): State<Slot>, Path(store): Path<String>, headers: HeaderMap) -> Response {
    show(&slot, &store, View::Store, &headers)
}

async fn view_page(
    State(slot): State<Slot>,
    Path((store, view)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match View::parse(&view) {
        Some(view) if view != View::Hq && view != View::Store => show(&slot, &store, view, &headers),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A store's page of `view`, for a person who may open it (the floor
/// board also for anyone, when configured so).
fn show(slot: &Slot, store: &str, view: View, headers: &HeaderMap) -> Response {
    let (api, people) = match ready(slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let Some(store) = store
        .parse::<StoreId>()
        .ok()
        .filter(|s| api.catalog().store(s).is_some())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let here = format!("/stores/{store}{}", view.suffix());
    match person(people, headers) {
        Some((user, session, _)) => {
            if viewer(&user, view, Some(&store)).is_none() {
                return forbidden(lang(headers));
            }
            page(api, &user, Some(&session), view, Some(&store), headers)
        }
        None if view == View::Floor && people.floor_public => pages::floor_public(api, &store, lang(headers)),
        None => to_login(&here),
    }
}

fn page(
    api: &Api,
    user: &User,
    session: Option<&Session>,
    view: View,
    store: Option<&StoreId>,
    headers: &HeaderMap,
) -> Response {
    let catalog = api.catalog();
    let stores = user.stores_of(catalog.stores().map(|s| &s.id));
    let views: Vec<View> = View::STORE_VIEWS
        .into_iter()
        .filter(|v| store.is_some_and(|s| viewer(user, *v, Some(s)).is_some()))
        .collect();
    let html = pages::shell(pages::Shell {
        lang: lang(headers),
        view,
        store,
        user,
        csrf: session.map_or("", |s| s.csrf.as_str()),
        stores: &stores,
        views: &views,
        catalog: &catalog,
    });
    (StatusCode::OK, pages::html_headers(), html).into_response()
}

async fn live_hq(State(slot): State<Slot>, headers: HeaderMap) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let Some((user, _, _)) = person(people, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match viewer(&user, View::Hq, None) {
        Some(identity) if user.role.is_chain_wide() => {
            let filters = View::Hq.filters(None, &identity);
            live::stream(api.outbound().clone(), filters).into_response()
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

async fn live_store(
    State(slot): State<Slot>,
    Path((store, view)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let (Ok(store), Some(view)) = (store.parse::<StoreId>(), View::parse(&view)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let identity = match person(people, &headers) {
        Some((user, _, _)) => viewer(&user, view, Some(&store)),
        None if view == View::Floor && people.floor_public && api.catalog().store(&store).is_some() => {
            Some(pages::floor_identity(&store))
        }
        None => return StatusCode::UNAUTHORIZED.into_response(),
    };
    match identity {
        Some(identity) => live::stream(api.outbound().clone(), view.filters(Some(&store), &identity)).into_response(),
        None => StatusCode::FORBIDDEN.into_response(),
    }
}

/// The API and `store`, for a person logged in who may read every one of
/// `filters` (`{store}` standing for the store) there; else the refusal.
fn reader<'a>(
    slot: &'a Slot,
    store: &str,
    headers: &HeaderMap,
    filters: &[&str],
) -> Result<(&'a Api, StoreId), StatusCode> {
    let (api, people) = ready(slot).map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let (user, _, _) = person(people, headers).ok_or(StatusCode::UNAUTHORIZED)?;
    let store = store.parse::<StoreId>().map_err(|_| StatusCode::NOT_FOUND)?;
    let allowed = user.identity(Some(&store)).is_some_and(|i| {
        filters
            .iter()
            .all(|f| i.may_subscribe(&f.replace("{store}", store.as_str())).is_ok())
    });
    if !allowed {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok((api, store))
}

/// The alert record of a store, for a page (alerts are events on MQTT: a
/// page that opens gets the recent ones from here).
async fn alerts(State(slot): State<Slot>, Path(store): Path<String>, headers: HeaderMap) -> Response {
    let (api, store) = match reader(&slot, &store, &headers, &["stores/{store}/alerts"]) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    match crate::api::alerts_record(api, store, 30).await {
        Ok(record) => axum::Json(record).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A store's day so far, for the store page's curves: each SKU's level
/// over the day, portions sold per local hour, waste by reason — from the
/// day's ledger (the store's own index) and the sale records it names.
/// For the people who may read the store's history.
async fn today(State(slot): State<Slot>, Path(store): Path<String>, headers: HeaderMap) -> Response {
    let filters = ["stores/{store}/stock/+/events", "stores/{store}/sales"];
    let (api, store) = match reader(&slot, &store, &headers, &filters) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let offset = api.catalog().planning().utc_offset_minutes;
    let now = dishsync_protocol::payload::Timestamp::now().0;
    let Some((date, from, to)) = crate::api::day_bounds(None, offset, now) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let crate::api::Day { lines, sales, report } =
        match crate::api::store_day(api, &store, (date.clone(), from, to)).await {
            Ok(day) => day,
            Err(e) => return e.into_response(),
        };
    let mut levels = serde_json::Map::new();
    for (_, payload) in api.outbound().retained(&format!("stores/{store}/stock/+/level")).await {
        let Ok(level) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            continue;
        };
        let (Some(sku), Some(qty)) = (level["sku"].as_str(), level["qty"].as_i64()) else {
            continue;
        };
        let of_sku: Vec<&dishsync_inventory::LedgerEntry> =
            lines.iter().map(|(_, l)| l).filter(|l| l.sku.as_str() == sku).collect();
        let curve: Vec<serde_json::Value> = dishsync_inventory::report::level_curve(&of_sku, qty, from)
            .into_iter()
            .map(|(at, qty)| serde_json::json!([dishsync_protocol::payload::Timestamp(at).to_string(), qty]))
            .collect();
        levels.insert(
            sku.to_string(),
            serde_json::json!({"unit": level["unit"], "points": curve}),
        );
    }
    let waste: serde_json::Map<String, serde_json::Value> = report
        .skus
        .iter()
        .filter(|(_, d)| d.waste > 0)
        .map(|(sku, d)| {
            (
                sku.to_string(),
                serde_json::json!({"unit": d.unit, "by_reason": d.waste_by_reason}),
            )
        })
        .collect();
    let hours = dishsync_inventory::report::sales_per_hour(sales.values(), offset);
    axum::Json(serde_json::json!({
        "store": store,
        "date": date,
        "from": dishsync_protocol::payload::Timestamp(from).to_string(),
        "to": dishsync_protocol::payload::Timestamp(to).to_string(),
        "levels": levels,
        "sales_per_hour": hours,
        "waste": waste,
        "waste_ratio": report.waste_ratio,
    }))
    .into_response()
}

/// A tap: the input a page made, on `topic`, as the person logged in.
async fn act(
    State(slot): State<Slot>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (api, people) = match ready(&slot) {
        Ok(both) => both,
        Err(r) => return r.into_response(),
    };
    let refuse = |status: StatusCode, code: &str, message: &str| {
        (status, axum::Json(serde_json::json!({"code": code, "error": message}))).into_response()
    };
    let Some((user, session, _)) = person(people, &headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "not logged in: log in again",
        );
    };
    let token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !sessions::same_token(&session.csrf, token) {
        return refuse(
            StatusCode::FORBIDDEN,
            "not_permitted",
            "the page's token is not this session's: reload the page",
        );
    }
    if body.len() > MAX_TAP {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "oversize", "the input is too large");
    }
    let parsed: Result<Topic, _> = topic.parse();
    let Ok(parsed) = parsed else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "not an input topic");
    };
    let Some(identity) = user.identity(parsed.store()) else {
        return refuse(StatusCode::FORBIDDEN, "not_permitted", "not one of your stores");
    };
    let outcome = crate::api::submit_as(api, &topic, &identity, &body).await;
    match outcome.answer {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(e) => e.into_response(),
    }
}
