//! The HTML of the web app's pages, in English or Simplified Chinese:
//! shells that the page script fills from the live stream, the login page,
//! the public floor board. Everything a page shows that comes from the
//! configuration or a request is escaped here; the script writes what the
//! documents hold as text only.

use axum::http::{header, HeaderName};
use dishsync_inventory::Catalog;
use dishsync_protocol::StoreId;

use crate::acl::{Identity, Role, Scope};
use crate::people::users::User;

/// The page script.
pub const APP_JS: &str = include_str!("assets/app.js");
/// The page style.
pub const APP_CSS: &str = include_str!("assets/app.css");

/// A page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The language a cookie or a link names.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// Its code.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// Its `lang` attribute.
    fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-Hans",
        }
    }
}

/// The server's words (the script has its own).
const WORDS: [(&str, &str, &str); 20] = [
    ("title", "dishsync", "dishsync"),
    ("login", "Log in", "登录"),
    ("name", "Name", "用户名"),
    ("password", "Password", "密码"),
    ("logout", "Log out", "退出"),
    ("wrong_password", "Wrong name or password.", "用户名或密码错误。"),
    (
        "too_many",
        "Too many failed logins from here: wait a minute.",
        "登录失败次数过多，请一分钟后再试。",
    ),
    (
        "login_expired",
        "The login form expired: try again.",
        "登录表单已过期，请重试。",
    ),
    ("refused", "You may not open this page.", "您无权打开此页面。"),
    ("hq", "All stores", "全部门店"),
    ("store", "Store", "门店"),
    ("manager", "Manager", "店长"),
    ("kitchen", "Kitchen", "厨房"),
    ("floor", "Floor", "前厅"),
    ("connecting", "connecting…", "连接中…"),
    ("home", "Home", "首页"),
    ("lang_other", "中文", "English"),
    ("lang_other_code", "zh", "en"),
    ("noscript", "This page needs JavaScript.", "此页面需要 JavaScript。"),
    ("board", "Floor board", "菜品看板"),
];

/// A word of the server's in `lang`.
pub fn text(lang: Lang, key: &str) -> &'static str {
    WORDS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or("", |(_, en, zh)| if lang == Lang::Zh { zh } else { en })
}

/// `s` safe in HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` safe in a URL's query value.
pub fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The headers of every page: HTML, never cached, nothing from elsewhere
/// (no script, style, font or frame from another origin, no inline script).
pub fn html_headers() -> [(HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ]
}

/// A page of the web app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Every store, worst first.
    Hq,
    /// A store's stock and dishes.
    Store,
    /// The manager's phone view.
    Manager,
    /// The kitchen's one-tap view.
    Kitchen,
    /// What can be sold.
    Floor,
}

impl View {
    /// A store's views, in the order the menu shows them.
    pub const STORE_VIEWS: [View; 4] = [View::Store, View::Manager, View::Kitchen, View::Floor];

    /// The view a path names.
    pub fn parse(s: &str) -> Option<View> {
        Some(match s {
            "hq" => View::Hq,
            "store" => View::Store,
            "manager" => View::Manager,
            "kitchen" => View::Kitchen,
            "floor" => View::Floor,
            _ => return None,
        })
    }

    /// Its name in paths and for the script.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Hq => "hq",
            View::Store => "store",
            View::Manager => "manager",
            View::Kitchen => "kitchen",
            View::Floor => "floor",
        }
    }

    /// Its path after `/stores/{store}`.
    pub fn suffix(self) -> &'static str {
        match self {
            View::Hq | View::Store => "",
            View::Manager => "/manager",
            View::Kitchen => "/kitchen",
            View::Floor => "/floor",
        }
    }

    /// What a person must be able to read to open it.
    pub fn main_filter(self, store: Option<&StoreId>) -> String {
        let s = store.map_or("+", |s| s.as_str());
        match self {
            View::Hq => "hq/stores/+/summary".into(),
            View::Store => format!("stores/{s}/stock/+/level"),
            // The manager's own: requests (a kitchen display reads none).
            View::Manager => format!("stores/{s}/replenishment/+"),
            View::Kitchen => format!("stores/{s}/stock/+/level"),
            View::Floor => format!("stores/{s}/dishes/+/availability"),
        }
    }

    /// The documents its live stream brings, of those `identity` may read.
    pub fn filters(self, store: Option<&StoreId>, identity: &Identity) -> Vec<String> {
        let s = store.map_or("+", |s| s.as_str());
        let all: Vec<String> = match self {
            View::Hq => vec![
                "hq/stores/+/summary".into(),
                "stores/+/catalog".into(),
                "stores/+/devices/+/status".into(),
                "hq/promotions/+".into(),
            ],
            View::Store => vec![
                format!("stores/{s}/catalog"),
                format!("stores/{s}/stock/+/level"),
                format!("stores/{s}/dishes/+/availability"),
                format!("hq/stores/{s}/summary"),
                format!("stores/{s}/alerts"),
            ],
            View::Manager => vec![
                format!("stores/{s}/catalog"),
                format!("stores/{s}/alerts"),
                format!("stores/{s}/transfers/+"),
                format!("stores/{s}/replenishment/+"),
                format!("stores/{s}/stock/+/level"),
                format!("stores/{s}/stock/+/variance"),
                format!("stores/{s}/promotions/+"),
            ],
            View::Kitchen => vec![
                format!("stores/{s}/catalog"),
                format!("stores/{s}/dishes/+/availability"),
                format!("stores/{s}/stock/+/level"),
                format!("stores/{s}/replenishment/+"),
                format!("stores/{s}/alerts"),
            ],
            View::Floor => vec![
                format!("stores/{s}/catalog"),
                format!("stores/{s}/dishes/+/availability"),
            ],
        };
        all.into_iter().filter(|f| identity.may_subscribe(f).is_ok()).collect()
    }
}

/// Who an open floor board reads as: a POS of the store, reading only.
pub fn floor_identity(store: &StoreId) -> Identity {
    Identity {
        device: "floor-board".parse().expect("a valid device id"),
        role: Role::Pos,
        scope: Scope::Store(store.clone()),
    }
}

/// What a page shell shows.
pub struct Shell<'a> {
    /// Its language.
    pub lang: Lang,
    /// Which view.
    pub view: View,
    /// Which store (`None`: HQ).
    pub store: Option<&'a StoreId>,
    /// Who is looking.
    pub user: &'a User,
    /// The session's CSRF token.
    pub csrf: &'a str,
    /// The stores the person has.
    pub stores: &'a [StoreId],
    /// The views of this store the person may open.
    pub views: &'a [View],
    /// The chain.
    pub catalog: &'a Catalog,
}

fn head(lang: Lang, title: &str, csrf: &str) -> String {
    format!(
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{}\"><title>{}</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head>",
        lang.tag(),
        escape(csrf),
        escape(title)
    )
}

/// A page: the header with the person, their stores and views, the
/// language switch and logout; the body the script fills.
pub fn shell(page: Shell<'_>) -> String {
    let Shell {
        lang,
        view,
        store,
        user,
        csrf,
        stores,
        views,
        catalog,
    } = page;
    let store_name = store
        .and_then(|s| catalog.store(s))
        .map_or_else(|| text(lang, "hq").to_string(), |s| s.name.clone());
    let title = format!("{store_name} · {} · dishsync", text(lang, view.as_str()));
    let mut nav = String::new();
    if user.role.is_chain_wide() {
        nav.push_str(&format!("<a href=\"/hq\">{}</a>", text(lang, "hq")));
    }
    if let Some(store) = store {
        for v in views {
            let current = if *v == view { " aria-current=\"page\"" } else { "" };
            nav.push_str(&format!(
                "<a href=\"/stores/{}{}\"{current}>{}</a>",
                escape(store.as_str()),
                v.suffix(),
                text(lang, v.as_str())
            ));
        }
    }
    let mut picker = String::new();
    if stores.len() > 1 {
        picker.push_str("<nav class=\"stores\">");
        for s in stores {
            let name = catalog.store(s).map_or(s.as_str(), |d| d.name.as_str());
            let current = if Some(s) == store { " aria-current=\"page\"" } else { "" };
            picker.push_str(&format!(
                "<a href=\"/stores/{}{}\"{current}>{}</a>",
                escape(s.as_str()),
                if view == View::Hq { "" } else { view.suffix() },
                escape(name)
            ));
        }
        picker.push_str("</nav>");
    }
    let here = match store {
        Some(s) => format!("/stores/{}{}", s.as_str(), view.suffix()),
        None => "/hq".into(),
    };
    let other = text(lang, "lang_other_code");
    format!(
        "{head}<body data-view=\"{view}\" data-store=\"{store}\" data-user=\"{user}\" data-role=\"{role}\" \
         data-offset=\"{offset}\" data-lang=\"{lang_code}\">\
         <header><strong class=\"brand\">dishsync</strong> <span class=\"place\">{store_name}</span>\
         <nav>{nav}</nav><span id=\"status\" class=\"status\" role=\"status\">{connecting}</span>\
         <span class=\"who\">{user}</span>\
         <a class=\"lang\" href=\"/lang/{other}?next={next}\">{other_name}</a>\
         <form method=\"post\" action=\"/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">{logout}</button></form></header>{picker}\
         <div id=\"queue\" class=\"queue\" role=\"status\" hidden></div>\
         <main id=\"main\"><noscript>{noscript}</noscript></main>\
         <script src=\"/assets/app.js\"></script></body></html>",
        head = head(lang, &title, csrf),
        view = view.as_str(),
        store = escape(store.map_or("", |s| s.as_str())),
        user = escape(user.name.as_str()),
        role = user.role.as_str(),
        offset = catalog.planning().utc_offset_minutes,
        lang_code = lang.as_str(),
        store_name = escape(&store_name),
        connecting = text(lang, "connecting"),
        next = url_escape(&here),
        other_name = text(lang, "lang_other"),
        csrf = escape(csrf),
        logout = text(lang, "logout"),
        noscript = text(lang, "noscript"),
    )
}

/// The floor board for anyone, when configured so: no person, no taps.
pub fn floor_public(api: &crate::api::Api, store: &StoreId, lang: Lang) -> axum::response::Response {
    use axum::response::IntoResponse;
    let catalog = api.catalog();
    let name = catalog.store(store).map_or(store.as_str(), |s| s.name.as_str());
    let html = format!(
        "{head}<body data-view=\"floor\" data-store=\"{store}\" data-user=\"\" data-role=\"\" data-offset=\"{offset}\" \
         data-lang=\"{lang_code}\"><header><strong class=\"brand\">dishsync</strong> <span class=\"place\">{name}</span>\
         <span id=\"status\" class=\"status\" role=\"status\">{connecting}</span></header>\
         <main id=\"main\"><noscript>{noscript}</noscript></main><script src=\"/assets/app.js\"></script></body></html>",
        head = head(lang, &format!("{name} · {}", text(lang, "board")), ""),
        store = escape(store.as_str()),
        offset = api.catalog().planning().utc_offset_minutes,
        lang_code = lang.as_str(),
        name = escape(name),
        connecting = text(lang, "connecting"),
        noscript = text(lang, "noscript"),
    );
    (axum::http::StatusCode::OK, html_headers(), html).into_response()
}

/// The login page, with `problem` said above the form.
pub fn login(lang: Lang, token: &str, next: &str, problem: Option<&str>) -> String {
    let other = text(lang, "lang_other_code");
    format!(
        "{head}<body class=\"login\"><main><h1>dishsync</h1>{problem}\
         <form method=\"post\" action=\"/login\">\
         <label>{name}<input name=\"name\" autocomplete=\"username\" required autofocus></label>\
         <label>{password}<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\"><input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <button type=\"submit\">{login}</button></form>\
         <p><a href=\"/lang/{other}?next=/login\">{other_name}</a></p></main></body></html>",
        head = head(lang, &format!("{} · dishsync", text(lang, "login")), ""),
        problem = problem.map_or(String::new(), |p| format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p))),
        name = text(lang, "name"),
        password = text(lang, "password"),
        token = escape(token),
        next = escape(next),
        login = text(lang, "login"),
        other_name = text(lang, "lang_other"),
    )
}

/// The page of a refusal.
pub fn refused(lang: Lang) -> String {
    format!(
        "{head}<body class=\"login\"><main><h1>403</h1><p class=\"problem\" role=\"alert\">{why}</p>\
         <p><a href=\"/\">{home}</a></p></main></body></html>",
        head = head(lang, "403 · dishsync", ""),
        why = text(lang, "refused"),
        home = text(lang, "home"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_page_shows_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(url_escape("/stores/s1?x=<y>"), "/stores/s1%3Fx%3D%3Cy%3E");
        let page = login(Lang::Zh, "t\"oken", "/x\"><script>", Some("<b>no</b>"));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(page.contains("登录"));
        assert_eq!(text(Lang::En, "login"), "Log in");
        assert!(WORDS.iter().all(|(_, en, zh)| !en.is_empty() && !zh.is_empty()));
    }
}
