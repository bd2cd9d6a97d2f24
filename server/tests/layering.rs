//! The import graph of `datapath` and `server`, checked against the one drawn in docs/ARCHITECTURE.md.
//!
//! Every source file belongs to a module node (`datapath::backend::xdp` for
//! `datapath/src/backend/xdp/*.rs`, `server::endpoint` for `server/src/endpoint/*.rs`, `server::bin` for
//! the binary). Every path a file names (`crate::…`, `datapath::…`, `server::…`, `super::…`, `self::…`,
//! grouped `{…}` imports expanded, in code, doc links or comments alike; inline `#[cfg(test)]` modules
//! excepted) is an arrow from its node to the node named.
//! The arrows found must be exactly the ones listed between the `layers:begin` and `layers:end` markers of
//! docs/ARCHITECTURE.md, and they must form no circle. Also: `datapath` depends on nothing that knows QUIC,
//! the canvas or HTTP (read with `cargo metadata`). Run: `cargo test --release -p server --test layering -- --nocapture`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The node of a file under `<crate>/src`: `backend` and `ops` have one node per child module, the
/// binary is one node, `lib.rs` is none (it only declares modules).
fn node_of(krate: &str, rel: &Path) -> Option<String> {
    let parts: Vec<String> =
        rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [lib] if lib == "lib" => None,
        [b, ..] if b == "bin" => Some(format!("{krate}::bin")),
        [group, m, ..] if (group == "backend" || group == "ops") && m != "mod" => {
            Some(format!("{krate}::{group}::{m}"))
        }
        [m, ..] => Some(format!("{krate}::{m}")),
        [] => None,
    }
}

/// The node a path names (`backend::xdp::XdpSocket` → `backend::xdp`), if it names a module of `krate`.
fn target(krate: &str, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    let first = *segs.first()?;
    let module = |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if !module(&first) {
        return None;
    }
    match (first, segs.get(1).filter(|m| module(m))) {
        ("backend" | "ops", Some(m)) => Some(format!("{krate}::{first}::{m}")),
        _ => Some(format!("{krate}::{first}")),
    }
}

/// The paths a use tree starting at `text` names, with `{…}` groups expanded (`a::{b, c::{d}}` →
/// `a::b`, `a::c::d`); plain paths are a tree of one.
fn use_tree(text: &str) -> Vec<String> {
    let head: String =
        text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
    let rest = &text[head.len()..];
    if !(head.is_empty() || head.ends_with("::")) || !rest.starts_with('{') {
        return vec![head.trim_end_matches(':').to_owned()];
    }
    // The group's top-level items, up to its matching brace.
    let (mut depth, mut items, mut start) = (0usize, Vec::new(), 1usize);
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&rest[start..i]);
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(str::trim)
        .filter(|i| !i.is_empty() && *i != "self")
        .flat_map(|i| use_tree(i).into_iter().map(|t| format!("{head}{t}")).collect::<Vec<_>>())
        .chain(std::iter::once(head.trim_end_matches(':').to_owned()))
        .collect()
}

/// Every `crate::`/`datapath::`/`server::`/`super::`/`self::` path in `text` (code, doc links and comments
/// alike: a comment naming a module is drawn too), as the node it names. `module` is the file's module path
/// inside its crate (`["backend", "xdp"]` for `backend/xdp/mod.rs` and `backend/xdp.rs`), against which
/// `super::` and `self::` resolve; `in_bin`: `crate::` names the binary itself, not the library.
fn references(krate: &str, module: &[String], in_bin: bool, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["crate::", "datapath::", "server::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            // A whole word that starts a path: `xcrate::`, `my_server::`, `super::super::`'s second do not count.
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':')
            {
                continue;
            }
            let (owner, base): (&str, Vec<String>) = match prefix {
                "crate::" if in_bin => continue,
                "crate::" => (krate, Vec::new()),
                "super::" | "self::" if in_bin => continue,
                "super::" => {
                    let mut m = module.to_vec();
                    m.pop();
                    let mut rest = &text[from..];
                    while let Some(r) = rest.strip_prefix("super::") {
                        m.pop();
                        rest = r;
                    }
                    from = text.len() - rest.len();
                    (krate, m)
                }
                "self::" => (krate, module.to_vec()),
                other => (other.trim_end_matches("::"), Vec::new()),
            };
            for path in use_tree(&text[from..]) {
                let full: Vec<&str> = base
                    .iter()
                    .map(String::as_str)
                    .chain(path.split("::").filter(|s| !s.is_empty()))
                    .collect();
                if let Some(t) = target(owner, &full.join("::")) {
                    out.insert(t);
                }
            }
        }
    }
    out
}

/// `text` up to its inline `#[cfg(test)] mod … {` block: tests may reach anywhere, and their `super::` is
/// one level deeper than the file's (test modules in files of their own, `mod tests;`, are scanned as
/// their own module).
fn without_inline_tests(text: &str) -> String {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let after = text[at + "#[cfg(test)]".len()..].trim_start();
        // `mod name {` (inline), not `mod name;` (a file of its own).
        if after.starts_with("mod ") && after.find(['{', ';']).is_some_and(|i| after.as_bytes()[i] == b'{') {
            return text[..at].to_owned();
        }
        from = at + 1;
    }
    text.to_owned()
}

/// The module path of a file under `<crate>/src` (`backend/xdp/frames.rs` → backend, xdp, frames;
/// `backend/xdp/mod.rs` → backend, xdp; `lib.rs` → nothing).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> =
        rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

fn code_graph() -> Graph {
    let mut g = Graph::new();
    for krate in ["datapath", "server"] {
        let src = root().join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).expect("under src");
            let Some(node) = node_of(krate, rel) else { continue };
            let text = without_inline_tests(&fs::read_to_string(&f).expect("read source"));
            let entry = g.entry(node.clone()).or_default();
            let in_bin = node.ends_with("::bin");
            for t in references(krate, &module_of(rel), in_bin, &text) {
                // Inside a node, and the `ops` umbrella module naming its own children, are not arrows.
                if t != node && !(node == format!("{krate}::ops") && t.starts_with(&node)) {
                    entry.insert(t);
                }
            }
        }
    }
    g
}

/// The arrows drawn in docs/ARCHITECTURE.md: lines `a -> b, c` (or `a ->`) between the markers.
fn drawn_graph() -> Graph {
    let doc = fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("read docs/ARCHITECTURE.md");
    let marker = "<!-- layers:begin -->";
    let begin = doc.find(marker).expect("layers:begin marker in docs/ARCHITECTURE.md") + marker.len();
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker in docs/ARCHITECTURE.md");
    let mut g = Graph::new();
    for line in doc[begin..end].lines() {
        let Some((from, to)) = line.split_once("->") else { continue };
        let set = g.entry(from.trim().to_string()).or_default();
        for t in to.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            set.insert(t.to_string());
        }
    }
    g
}

fn render(g: &Graph) -> String {
    g.iter().map(|(k, v)| format!("{k} -> {}\n", v.iter().cloned().collect::<Vec<_>>().join(", "))).collect()
}

#[test]
fn imports_match_the_drawing_and_point_one_way() {
    let code = code_graph();
    println!("import graph of the code:\n{}", render(&code));
    let drawn = drawn_graph();
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for (from, tos) in &code {
        for t in tos {
            if !drawn.get(from).is_some_and(|d| d.contains(t)) {
                extra.push(format!("{from} -> {t}"));
            }
        }
    }
    for (from, tos) in &drawn {
        for t in tos {
            if !code.get(from).is_some_and(|c| c.contains(t)) {
                missing.push(format!("{from} -> {t}"));
            }
        }
    }
    let nodes: BTreeSet<_> = code.keys().collect();
    let drawn_nodes: BTreeSet<_> = drawn.keys().collect();
    assert_eq!(nodes, drawn_nodes, "the modules drawn are not the modules in the code");
    assert!(
        extra.is_empty() && missing.is_empty(),
        "docs/ARCHITECTURE.md and the code disagree.\nin the code, not drawn: {extra:#?}\ndrawn, not in the \
         code: {missing:#?}"
    );

    // No circle: repeatedly remove nodes nothing left points to... i.e. a topological order exists.
    let mut left: Graph = code.clone();
    while !left.is_empty() {
        let sink =
            left.iter().find(|(_, tos)| tos.iter().all(|t| !left.contains_key(t))).map(|(k, _)| k.clone());
        match sink {
            Some(k) => {
                left.remove(&k);
            }
            None => panic!("a circle among: {}", left.keys().cloned().collect::<Vec<_>>().join(", ")),
        }
    }

    // Nothing in packet I/O points up, and the server core never imports the operations layer.
    for (from, tos) in &code {
        if from.starts_with("datapath::") {
            assert!(
                tos.iter().all(|t| t.starts_with("datapath::")),
                "{from} imports above packet I/O: {tos:?}"
            );
        }
        if from.starts_with("server::") && !from.starts_with("server::ops") && from != "server::bin" {
            assert!(
                !tos.iter().any(|t| t.starts_with("server::ops") || t == "server::bin"),
                "the server core ({from}) imports the operations layer or the binary: {tos:?}"
            );
        }
    }
}

#[test]
fn datapath_depends_on_nothing_above_packets() {
    // Cargo's own reading of the manifest: every form (`[dependencies.x]`, `[target.'cfg(..)'.dependencies]`,
    // renames) counts; only dev-dependencies (tests may use anything) do not.
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(root().join("datapath/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "datapath"))
        .expect("the datapath package");
    let names: Vec<&str> = pkg["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null() || d["kind"] == "build")
        .filter_map(|d| d["name"].as_str())
        .collect();
    println!("datapath dependencies: {}", names.join(", "));
    for forbidden in
        ["quiche", "canvas", "hugepages", "tiny_http", "png", "crossbeam-queue", "server", "ring"]
    {
        assert!(!names.contains(&forbidden), "datapath depends on {forbidden}");
    }
}

/// The scanner itself: grouped imports, `super::`/`self::`, the binary's own `crate::`, inline tests.
#[test]
fn references_resolve_groups_super_and_self() {
    let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let text = "use crate::{master::X, endpoint::{a, b::C}};\nuse datapath::backend::{mem, uring::U};\n\
                use super::doctor::Y;\nuse self::inner::Z;\nfn f() { super::super::quic::q(); }";
    assert_eq!(
        references("server", &m(&["ops", "live"]), false, text),
        set(&[
            "server::master",
            "server::endpoint",
            "datapath::backend::mem",
            "datapath::backend::uring",
            "datapath::backend",
            "server::ops::doctor",
            "server::ops::live",
            "server::quic",
        ])
    );
    // In the binary, `crate::` is the binary's own module; `server::` is the library.
    assert_eq!(
        references("server", &[], true, "use crate::args::A; use server::link::L;"),
        set(&["server::link"])
    );
    // Inline tests are cut off; a `mod x;` declaration is not.
    let t = "use crate::a::A;\n#[cfg(test)]\nmod other;\n#[cfg(test)]\nmod tests {\n use crate::b::B;\n}";
    assert_eq!(references("server", &[], false, &without_inline_tests(t)), set(&["server::a"]));
}
