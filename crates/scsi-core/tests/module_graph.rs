//! scsi-core's top-level modules must not import each other in a cycle.
//!
//! The layers are drawn in the crate docs (`src/lib.rs`). This test reads every `.rs` file under
//! `src/`, maps it to its top-level module (`src/pr/engine.rs` → `pr`, `src/lu.rs` → `lu`; the
//! crate root `lib.rs` is no module), and collects each reference from one top-level module to
//! another:
//!
//! * `crate::NAME` anywhere in the code, including every head of a `use crate::{a, b::c}`
//!   group (over as many lines as it takes);
//! * `super::…` that climbs from a submodule back to the crate root and goes on to `NAME`;
//! * `crate::Item` where the root re-exports `Item` from a module (`pub use sense::Sense` makes
//!   `crate::Sense` a reference to `sense`).
//!
//! Comments, string literals and test-only code are left out: items under `#[cfg(test)]`
//! (inline `mod tests { … }`, test helpers) and the files of modules declared
//! `#[cfg(test)] mod NAME;` (`src/tests.rs`, `src/tests/`, `src/pr/tests.rs`, ...). A glob
//! `use crate::*` is not followed.
//!
//! If the graph has a cycle the test fails, naming the modules on one cycle with one `file:line`
//! per edge, and then listing every edge among the modules that import each other in a circle:
//! cutting enough of those is what makes it pass again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Lexing: just enough of Rust to find paths outside comments and literals.

/// An identifier, `::`, or one punctuation character, with the line it is on (1-based).
#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

impl Token {
    fn is(&self, s: &str) -> bool {
        self.text == s
    }

    fn is_ident(&self) -> bool {
        self.text
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
    }
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Split source text into tokens, dropping whitespace, comments, string / char literals,
/// lifetimes and numbers.
fn lex(text: &str) -> Vec<Token> {
    let s: Vec<char> = text.chars().collect();
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skip a string body whose opening quote is at `i` (escapes honoured); returns the index
    // after the closing quote.
    let skip_string = |mut i: usize, line: &mut usize| {
        i += 1;
        while i < s.len() && s[i] != '"' {
            if s[i] == '\\' {
                i += 1;
            }
            if at(i) == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(i, &mut line);
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // Escaped char literal: '\n', '\'', '\u{..}'.
                i += 2;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3; // 'x'
            } else {
                i += 1; // a lifetime or label; its name lexes as an identifier, harmlessly
            }
        } else if c.is_ascii_digit() {
            while i < s.len() && (is_ident_char(s[i]) || s[i] == '.' && at(i + 1).is_ascii_digit())
            {
                i += 1;
            }
        } else if is_ident_char(c) {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                ("b", '"') => i = skip_string(i, &mut line),
                ("b", '\'') => {
                    i += 1;
                    if at(i) == '\\' {
                        i += 1;
                    }
                    i += 1;
                    while i < s.len() && s[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                ("r" | "br", '"' | '#') => {
                    let mut hashes = 0;
                    while at(i + hashes) == '#' {
                        hashes += 1;
                    }
                    if at(i + hashes) == '"' {
                        // Raw string: ends at a quote followed by as many hashes.
                        i += hashes + 1;
                        loop {
                            if i >= s.len() {
                                break;
                            }
                            if s[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                                i += hashes + 1;
                                break;
                            }
                            if s[i] == '\n' {
                                line += 1;
                            }
                            i += 1;
                        }
                    } else {
                        // Raw identifier `r#name`: the name follows as an identifier.
                        i += hashes;
                    }
                }
                _ => toks.push(Token { text: word, line }),
            }
        } else if c == ':' && at(i + 1) == ':' {
            toks.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            toks.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    toks
}

/// Index just past the bracket group that opens at `toks[open]`.
fn skip_group(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    let mut i = open;
    while i < toks.len() {
        match toks[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether `toks[i..]` starts with exactly these token texts.
fn starts_with(toks: &[Token], i: usize, texts: &[&str]) -> bool {
    texts
        .iter()
        .enumerate()
        .all(|(k, t)| toks.get(i + k).is_some_and(|tok| tok.is(t)))
}

/// What is left of a file once its test-only code is gone.
struct Stripped {
    toks: Vec<Token>,
    /// Child modules declared `#[cfg(test)] mod NAME;` (their files are test-only).
    test_children: Vec<String>,
    /// The whole file is `#![cfg(test)]`.
    test_only: bool,
}

/// Remove every item under `#[cfg(test)]`: the attribute, any attributes after it, and the
/// item up to its `;` or its closing `}`.
fn strip_test_code(toks: Vec<Token>) -> Stripped {
    const CFG_TEST: &[&str] = &["#", "[", "cfg", "(", "test", ")", "]"];
    const INNER_CFG_TEST: &[&str] = &["#", "!", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(toks.len());
    let mut test_children = Vec::new();
    let mut test_only = false;
    let mut i = 0;
    while i < toks.len() {
        if starts_with(&toks, i, INNER_CFG_TEST) {
            test_only = true;
            i += INNER_CFG_TEST.len();
            continue;
        }
        if !starts_with(&toks, i, CFG_TEST) {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        let mut j = i + CFG_TEST.len();
        while starts_with(&toks, j, &["#", "["]) {
            j = skip_group(&toks, j + 1);
        }
        let item = j;
        while j < toks.len() {
            match toks[j].text.as_str() {
                ";" => {
                    j += 1;
                    break;
                }
                "{" => {
                    j = skip_group(&toks, j);
                    break;
                }
                "(" | "[" => j = skip_group(&toks, j),
                _ => j += 1,
            }
        }
        // `[pub[(…)]] mod NAME;`
        let body = &toks[item..j];
        if let Some(k) = body.iter().position(|t| t.is("mod")) {
            if body.len() == k + 3 && body[k + 1].is_ident() && body[k + 2].is(";") {
                test_children.push(body[k + 1].text.clone());
            }
        }
        i = j;
    }
    Stripped {
        toks: out,
        test_children,
        test_only,
    }
}

// ---------------------------------------------------------------------------------------------
// The crate root and the references of each module.

/// What the crate root declares.
#[derive(Debug, Default)]
struct Root {
    /// Top-level modules (`mod NAME;` in lib.rs, test-only ones left out).
    modules: BTreeSet<String>,
    /// Items the root re-exports from a module: `pub use sense::{Sense, …}` maps `Sense` to
    /// `sense`.
    reexports: BTreeMap<String, String>,
    /// Modules the root declares `#[cfg(test)]`.
    test_children: Vec<String>,
}

fn parse_root(lib_rs: &str) -> Root {
    let stripped = strip_test_code(lex(lib_rs));
    let toks = &stripped.toks;
    let mut root = Root {
        test_children: stripped.test_children,
        ..Root::default()
    };
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate() {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => depth -= 1,
            "mod" if depth == 0 => {
                if let (Some(name), Some(semi)) = (toks.get(i + 1), toks.get(i + 2)) {
                    if name.is_ident() && semi.is(";") {
                        root.modules.insert(name.text.clone());
                    }
                }
            }
            _ => {}
        }
    }
    // `use [crate::|self::]MODULE::…;` — every leaf of the tree (the identifier right before a
    // `,`, `}` or `;`, which is the alias when there is one) comes from MODULE.
    let mut i = 0;
    while i < toks.len() {
        if !toks[i].is("use") {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if toks.get(j).is_some_and(|t| t.is("crate") || t.is("self"))
            && toks.get(j + 1).is_some_and(|t| t.is("::"))
        {
            j += 2;
        }
        let end = (j..toks.len())
            .find(|&k| toks[k].is(";"))
            .unwrap_or(toks.len());
        if let Some(module) = toks.get(j).filter(|t| root.modules.contains(&t.text)) {
            for k in j + 1..end {
                let next = toks.get(k + 1).map_or(";", |t| t.text.as_str());
                if toks[k].is_ident() && !toks[k].is("self") && matches!(next, "," | "}" | ";") {
                    root.reexports
                        .insert(toks[k].text.clone(), module.text.clone());
                }
            }
        }
        i = end;
    }
    root
}

impl Root {
    /// The top-level module a path reaches when its first segment after the root is `head`.
    fn resolve(&self, head: &str) -> Option<&str> {
        self.modules
            .get(head)
            .or_else(|| self.reexports.get(head))
            .map(String::as_str)
    }
}

/// A reference from one top-level module to another, at `file:line`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// The heads of the path that continues at `toks[i]` from the crate root: one identifier, or
/// the first identifier of each item of a `{…}` group.
fn path_heads(toks: &[Token], i: usize) -> Vec<&Token> {
    match toks.get(i) {
        Some(t) if t.is("{") => {
            let end = skip_group(toks, i) - 1;
            let mut heads = Vec::new();
            let mut k = i + 1;
            let mut item_start = true;
            while k < end {
                let t = &toks[k];
                if item_start && t.is_ident() {
                    heads.push(t);
                }
                item_start = false;
                match t.text.as_str() {
                    "," => item_start = true,
                    "{" | "(" | "[" => {
                        k = skip_group(toks, k);
                        continue;
                    }
                    _ => {}
                }
                k += 1;
            }
            heads
        }
        Some(t) if t.is_ident() => vec![t],
        _ => Vec::new(),
    }
}

/// The references to other top-level modules in one file. `module` is the file's module path
/// (`["pr", "engine"]` for `src/pr/engine.rs`, `["pr"]` for `src/pr/mod.rs`); `toks` have had
/// their test code stripped.
fn references(root: &Root, file: &str, module: &[String], toks: &[Token]) -> Vec<Edge> {
    let me = module[0].as_str();
    let mut edges = Vec::new();
    let mut add = |head: &Token| {
        if head.is("self") {
            return;
        }
        if let Some(to) = root.resolve(&head.text).filter(|&to| to != me) {
            edges.push(Edge {
                from: me.to_string(),
                to: to.to_string(),
                file: file.to_string(),
                line: head.line,
            });
        }
    };
    // Inline `mod NAME { … }` blocks we are in, with the brace depth outside each.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate() {
        let after_path_sep = i > 0 && toks[i - 1].is("::");
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            "mod" if starts_with(toks, i + 2, &["{"]) && toks[i + 1].is_ident() => {
                inline.push(depth);
            }
            "crate" if !after_path_sep && starts_with(toks, i + 1, &["::"]) => {
                path_heads(toks, i + 2).into_iter().for_each(&mut add);
            }
            "super" if !after_path_sep => {
                let mut ups = 0;
                let mut k = i;
                while starts_with(toks, k, &["super", "::"]) {
                    ups += 1;
                    k += 2;
                }
                // Climbing exactly to the root leaves this module; anything shorter stays in.
                if ups > 0 && ups == module.len() + inline.len() {
                    path_heads(toks, k).into_iter().for_each(&mut add);
                }
            }
            _ => {}
        }
    }
    edges
}

/// The module graph of a crate given its root and its other files as (module path, source)
/// pairs, e.g. `("pr::engine", "use crate::lu::LogicalUnit;")`. Files of test-only modules are
/// left out. Edges are reported at `module path:line`.
fn graph_of(lib_rs: &str, files: &[(&str, &str)]) -> Vec<Edge> {
    let files: Vec<(String, Vec<String>, String)> = files
        .iter()
        .map(|(m, text)| {
            let path = m.split("::").map(String::from).collect();
            (m.to_string(), path, text.to_string())
        })
        .collect();
    graph(&parse_root(lib_rs), &files)
}

/// Every edge of the graph, sorted. `files` are (name to report, module path, source text).
fn graph(root: &Root, files: &[(String, Vec<String>, String)]) -> Vec<Edge> {
    let mut test_modules: Vec<Vec<String>> =
        root.test_children.iter().map(|c| vec![c.clone()]).collect();
    let mut parsed = Vec::new();
    for (name, module, text) in files {
        let s = strip_test_code(lex(text));
        if s.test_only {
            test_modules.push(module.clone());
        }
        for child in &s.test_children {
            let mut m = module.clone();
            m.push(child.clone());
            test_modules.push(m);
        }
        parsed.push((name, module, s.toks));
    }
    let mut edges = Vec::new();
    for (name, module, toks) in parsed {
        let is_test = test_modules.iter().any(|t| module.starts_with(t));
        if is_test || module.is_empty() || !root.modules.contains(&module[0]) {
            continue;
        }
        edges.extend(references(root, name, module, &toks));
    }
    edges.sort();
    edges
}

// ---------------------------------------------------------------------------------------------
// Cycles.

/// from → to → where.
type Adjacency<'a> = BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a Edge>>>;

fn adjacency(edges: &[Edge]) -> Adjacency<'_> {
    let mut adj: Adjacency = BTreeMap::new();
    for e in edges {
        adj.entry(&e.from).or_default();
        adj.entry(&e.to).or_default();
        adj.get_mut(e.from.as_str())
            .unwrap()
            .entry(&e.to)
            .or_default()
            .push(e);
    }
    adj
}

/// The strongly connected components with more than one module (Tarjan), each sorted.
fn tangles<'a>(adj: &Adjacency<'a>) -> Vec<Vec<&'a str>> {
    struct Tarjan<'a, 'b> {
        adj: &'b Adjacency<'a>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    impl<'a> Tarjan<'a, '_> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in self.adj[v].keys() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.found.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &v in adj.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

/// A shortest cycle through the first module of `scc`, as the list of modules on it.
fn one_cycle<'a>(adj: &Adjacency<'a>, scc: &[&'a str]) -> Vec<&'a str> {
    let start = scc[0];
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in adj[v].keys().filter(|w| scc.contains(w)) {
            if w == start {
                let mut path = vec![v];
                while let Some(&p) = parent.get(path.last().unwrap()) {
                    path.push(p);
                }
                path.reverse();
                return path;
            }
            if !parent.contains_key(w) && w != start {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its modules")
}

fn place(es: &[&Edge]) -> String {
    let more = match es.len() {
        1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    format!("{}:{}{more}", es[0].file, es[0].line)
}

/// `None` if the graph is acyclic, else a report of its cycles.
fn cycle_report(edges: &[Edge]) -> Option<String> {
    let adj = adjacency(edges);
    let sccs = tangles(&adj);
    if sccs.is_empty() {
        return None;
    }
    let mut out = String::from(
        "scsi-core's modules import each other in a cycle (layers: see the crate docs in \
         src/lib.rs)\n",
    );
    for scc in &sccs {
        let cycle = one_cycle(&adj, scc);
        let _ = writeln!(out, "\ncycle: {} -> {}", cycle.join(" -> "), cycle[0]);
        for (k, &from) in cycle.iter().enumerate() {
            let to = cycle[(k + 1) % cycle.len()];
            let _ = writeln!(out, "  {from} -> {to}  {}", place(&adj[from][to]));
        }
        let _ = writeln!(
            out,
            "every edge among {{{}}} (cut enough of these):",
            scc.join(", ")
        );
        for &from in scc {
            for (&to, es) in adj[from].iter().filter(|(to, _)| scc.contains(to)) {
                let _ = writeln!(out, "  {from} -> {to}  {}", place(es));
            }
        }
    }
    Some(out)
}

/// The modules of an acyclic graph by layer: layer 0 imports no other module, layer n only
/// modules of lower layers (and at least one of layer n - 1).
fn layers(edges: &[Edge]) -> Vec<Vec<&str>> {
    let adj = adjacency(edges);
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    while layer.len() < adj.len() {
        let before = layer.len();
        for (&m, deps) in &adj {
            if layer.contains_key(m) || !deps.keys().all(|d| layer.contains_key(d)) {
                continue;
            }
            let l = deps.keys().map(|d| layer[d] + 1).max().unwrap_or(0);
            layer.insert(m, l);
        }
        assert!(layer.len() > before, "layers of a graph with a cycle");
    }
    let mut out: Vec<Vec<&str>> = Vec::new();
    for (m, l) in layer {
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(m);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The crate itself.

/// (path relative to the crate, module path, text) of every `.rs` file under `dir`.
fn read_sources(crate_dir: &Path, dir: &Path, out: &mut Vec<(String, Vec<String>, String)>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(crate_dir, &path, out);
            continue;
        }
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = path.strip_prefix(crate_dir.join("src")).unwrap();
        let mut module: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        if module == ["lib"] {
            continue; // the crate root
        }
        let text = fs::read_to_string(&path).unwrap();
        let shown = path.strip_prefix(crate_dir).unwrap().display().to_string();
        out.push((shown, module, text));
    }
}

#[test]
fn scsi_core_modules_import_no_cycle() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = parse_root(&fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap());
    let mut files = Vec::new();
    read_sources(crate_dir, &crate_dir.join("src"), &mut files);

    // The checker must be looking at the real thing: every module has its file.
    for m in &root.modules {
        assert!(
            files.iter().any(|(_, path, _)| path[0] == *m),
            "module {m} declared in lib.rs but no file found"
        );
    }
    let edges = graph(&root, &files);
    assert!(!edges.is_empty(), "no references between modules found");
    if let Some(report) = cycle_report(&edges) {
        panic!("{report}");
    }
    // For `--nocapture`: the layers as they are (compare with the diagram in src/lib.rs).
    for (n, modules) in layers(&edges).iter().enumerate() {
        println!("layer {n}: {}", modules.join(", "));
    }
}

// ---------------------------------------------------------------------------------------------
// The checker itself, on made-up crates.

fn pairs(edges: &[Edge]) -> BTreeSet<(String, String)> {
    edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone()))
        .collect()
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_string(), to.to_string())
}

const LIB: &str = "
    mod a;
    mod b;
    mod c;
    pub mod d;
    #[cfg(test)]
    mod tests;
    pub use c::{Thing as Renamed, Other};
    pub use d::Single;
    pub struct RootItem;
";

#[test]
fn checker_finds_paths_groups_super_and_reexports() {
    let edges = graph_of(
        LIB,
        &[
            (
                "a",
                "use crate::{\n    b::{X, Y},\n    RootItem,\n    self as _,\n};\nfn f() -> crate::Renamed { todo!() }\n",
            ),
            ("b::inner", "use super::super::d::Z;\nuse super::Sibling;\n"),
            ("c", "use crate::c::Own;\nfn g(x: &crate::Single) {}\n"),
            ("d", "pub(crate) struct Single;\n"),
        ],
    );
    assert_eq!(
        pairs(&edges),
        BTreeSet::from([
            pair("a", "b"),
            pair("a", "c"),
            pair("b", "d"),
            pair("c", "d")
        ])
    );
    let ab = edges.iter().find(|e| e.to == "b").unwrap();
    assert_eq!(
        (ab.file.as_str(), ab.line),
        ("a", 2),
        "the line of the group item"
    );
    let ac = edges.iter().find(|e| e.from == "a" && e.to == "c").unwrap();
    assert_eq!(ac.line, 6);
}

#[test]
fn checker_ignores_comments_strings_and_test_code() {
    let edges = graph_of(
        LIB,
        &[
            (
                "a",
                r##"
                // use crate::b;
                /* crate::b /* nested */ crate::c */
                /// [`crate::b::X`]
                const S: &str = "crate::b";
                const R: &str = r#"crate::c "quoted" "#;
                const C: char = '"';
                fn f<'x>(v: &'x u8) -> char { 'a' }
                #[cfg(test)]
                fn helper() { crate::c::x(); }
                #[cfg(test)]
                mod tests {
                    use crate::b::X;
                    use super::super::d;
                }
                use crate::d::Real;
                "##,
            ),
            ("tests", "use crate::b;"),
            ("tests::deeper", "use crate::c;"),
            ("b", "#[cfg(test)]\nmod model;\n"),
            ("b::model", "use crate::a;"),
            ("c", "#![cfg(test)]\nuse crate::a;"),
        ],
    );
    assert_eq!(pairs(&edges), BTreeSet::from([pair("a", "d")]));
    assert_eq!(edges[0].line, 16);
}

#[test]
fn checker_reports_a_cycle_with_its_edges() {
    let edges = graph_of(
        LIB,
        &[
            ("a", "use crate::b::X;"),
            ("b", "\n\nuse crate::c::Y;"),
            ("c", "fn f() { crate::a::z(); crate::a::w(); }"),
            ("d", "use crate::a::Q;"),
        ],
    );
    let report = cycle_report(&edges).expect("a -> b -> c -> a is a cycle");
    assert!(report.contains("cycle: a -> b -> c -> a"), "{report}");
    assert!(report.contains("  b -> c  b:3"), "{report}");
    assert!(report.contains("  c -> a  c:1 (+1 more)"), "{report}");
    assert!(!report.contains("d ->"), "{report}");

    let acyclic = graph_of(
        LIB,
        &[
            ("a", "use crate::b::X;"),
            ("c", "use crate::{a, b};"),
            ("d", "use crate::c::X;"),
        ],
    );
    assert_eq!(cycle_report(&acyclic), None);
    assert_eq!(
        layers(&acyclic),
        vec![vec!["b"], vec!["a"], vec!["c"], vec!["d"]]
    );
}
