//! The Easel configs shipped under `deploy/` (Docker, Kubernetes, systemd) are real ones: each
//! loads, validates and passes `easel serve --check-config` with the environment its deployment
//! gives it; the copies embedded in Kubernetes ConfigMaps are identical to their files; and the
//! files the Docker and compose files name exist.
//!
//! A config that serves a local model names a folder that exists only where it is deployed
//! (`/models/sd-turbo`). Here `--check-config` must fail on that folder, and on nothing else:
//! checked again with the folder pointed at a tiny random model of the same family, it passes.
//!
//! Every `easel*.toml` under `deploy/` is found by walking the folder, so a new one is checked
//! without touching this file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use easel_server::config::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

/// `path` relative to the repository root, for messages.
fn rel(path: &Path) -> String {
    let root = root().canonicalize().unwrap();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    path.strip_prefix(&root).unwrap_or(&path).display().to_string()
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn shipped_configs() -> Vec<PathBuf> {
    let configs: Vec<PathBuf> = walk(&deploy())
        .into_iter()
        .filter(|p| {
            let name = file_name(p);
            name.starts_with("easel") && name.ends_with(".toml")
        })
        .collect();
    // The walk must find what is known to be there, or every test below passes on nothing.
    for known in ["docker/easel-api.toml", "kubernetes/easel-worker.toml", "systemd/easel.toml"] {
        assert!(configs.iter().any(|p| p.ends_with(known)), "deploy/{known} not found among {configs:?}");
    }
    configs
}

fn parse(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    text.parse().unwrap_or_else(|e| panic!("{}: not TOML: {e}", rel(path)))
}

/// The environment variables a config names for its secrets: each provider's and the prompt
/// enhancer's `api_key_env`, and `[auth] url_signing_key_env`.
fn named_env(config: &toml::Table) -> Vec<String> {
    let mut names = Vec::new();
    let tables = config
        .get("providers")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .chain(config.get("prompt_enhancer"))
        .chain(config.get("auth"));
    for table in tables {
        for key in ["api_key_env", "url_signing_key_env"] {
            if let Some(name) = table.get(key).and_then(|v| v.as_str()) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// `(family, path)` of every `backend = "local"` model.
fn local_models(config: &toml::Table) -> Vec<(String, String)> {
    let models = config.get("models").and_then(|m| m.as_array()).into_iter().flatten();
    models
        .filter(|m| m.get("backend").and_then(|b| b.as_str()) == Some("local"))
        .map(|m| {
            let text = |key: &str| m.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            (text("family"), text("path"))
        })
        .collect()
}

fn model_count(config: &toml::Table) -> usize {
    config.get("models").and_then(|m| m.as_array()).map_or(0, Vec::len)
}

/// `easel serve --check-config --config path`, with the variables `names` set to stand-in values
/// and none of this process's own `EASEL*`, `AWS_*` or `PG*` variables (scripts/test.sh exports
/// some for its services; a deployment has its own). Returns success and everything it printed.
fn check_config(path: &Path, names: &[String]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_easel"));
    command.args(["serve", "--check-config", "--config"]).arg(path);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("EASEL") || name.starts_with("AWS_") || name.starts_with("PG") {
            command.env_remove(&*name);
        }
    }
    for name in names {
        command.env(name, format!("stand-in-for-{name}"));
    }
    let output = command.output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[test]
fn every_shipped_config_loads_and_validates() {
    for path in shipped_configs() {
        let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", rel(&path)));
        config.validate().unwrap_or_else(|e| panic!("{}: {e:#}", rel(&path)));
    }
}

#[test]
fn every_shipped_config_passes_check_config() {
    let scratch = tempfile::tempdir().unwrap();
    // One tiny random model per family, made by the real CLI when a config first needs it.
    let mut made: HashMap<String, PathBuf> = HashMap::new();
    for (i, path) in shipped_configs().into_iter().enumerate() {
        let config = parse(&path);
        let names = named_env(&config);
        let local = local_models(&config);
        let (ok, said) = check_config(&path, &names);
        let expected = format!("configuration OK: {} model(s)", model_count(&config));
        if local.is_empty() {
            assert!(ok && said.contains(&expected), "{}: {said}", rel(&path));
            continue;
        }

        // Deployed, the folder is there; here it is not, and that must be the only complaint.
        let (_, first) = &local[0];
        assert!(!ok, "{}: passed, though {first} does not exist here: {said}", rel(&path));
        assert!(
            said.contains(&format!("the model folder {first} does not exist")),
            "{}: should fail on the missing folder {first} alone: {said}",
            rel(&path)
        );

        let mut text = std::fs::read_to_string(&path).unwrap();
        for (family, folder) in &local {
            let model = made.entry(family.clone()).or_insert_with(|| {
                let out = scratch.path().join(format!("random-{family}"));
                let output = Command::new(env!("CARGO_BIN_EXE_easel"))
                    .args(["models", "create-random", "--family", family, "--scale", "tiny", "--out"])
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(output.status.success(), "create-random {family}: {}", String::from_utf8_lossy(&output.stderr));
                out
            });
            let quoted = format!("\"{folder}\"");
            assert!(text.contains(&quoted), "{}: path {quoted} not written as a plain string", rel(&path));
            text = text.replace(&quoted, &format!("\"{}\"", model.display()));
        }
        let copy = scratch.path().join(format!("{i}-{}", file_name(&path)));
        std::fs::write(&copy, text).unwrap();
        let (ok, said) = check_config(&copy, &names);
        assert!(ok && said.contains(&expected), "{} (its model folders made here): {said}", rel(&path));
    }
}

/// The text of a YAML literal block (`key: |`) that starts after line `at`, as the YAML parser
/// reads it: the block's own indentation removed, one final newline (the default "clip").
fn literal_block(lines: &[&str], at: usize) -> String {
    let key_indent = lines[at].len() - lines[at].trim_start().len();
    let mut indent = None;
    let mut block = String::new();
    for line in &lines[at + 1..] {
        if line.trim().is_empty() {
            block.push('\n');
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= key_indent {
            break;
        }
        let indent = *indent.get_or_insert(this);
        block.push_str(line.get(indent.min(this)..).unwrap_or_default());
        block.push('\n');
    }
    format!("{}\n", block.trim_end_matches('\n'))
}

#[test]
fn configmap_copies_match_their_files() {
    let mut compared = Vec::new();
    for yaml in walk(&deploy()).into_iter().filter(|p| file_name(p).ends_with(".yaml")) {
        let text = std::fs::read_to_string(&yaml).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if !line.trim_start().ends_with(".toml: |") {
                continue;
            }
            let source = at
                .checked_sub(1)
                .and_then(|above| lines[above].split("identical to ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| {
                    panic!(
                        "{}:{}: an embedded config needs the comment `# Must stay identical to deploy/....toml` on the line above",
                        rel(&yaml),
                        at + 1
                    )
                });
            let source = root().join(source);
            assert!(
                file_name(&source).starts_with("easel") && source.starts_with(deploy()),
                "{}: {} must be an easel*.toml under deploy/, so that the tests above check it",
                rel(&yaml),
                source.display()
            );
            let expected = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
            let expected = format!("{}\n", expected.trim_end_matches('\n'));
            assert!(
                literal_block(&lines, at) == expected,
                "{}:{}: the embedded config differs from {}; copy the file into the block again",
                rel(&yaml),
                at + 1,
                rel(&source)
            );
            compared.push(rel(&source));
        }
    }
    for known in ["deploy/kubernetes/easel-api.toml", "deploy/kubernetes/easel-worker.toml"] {
        assert!(compared.iter().any(|c| c == known), "no ConfigMap embeds {known}; compared {compared:?}");
    }
}

#[test]
fn files_named_by_docker_and_compose_exist() {
    let docker = deploy().join("docker");
    let mut named = 0;
    for file in walk(&docker) {
        let name = file_name(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c| matches!(c, '"' | '\'' | ',' | '[' | ']'));
            // compose.yaml mounts `./file:/in/container`, relative to itself.
            let (base, path) = if let Some(path) = word.strip_prefix("./") {
                (docker.clone(), path.split(':').next().unwrap_or_default())
            // A Dockerfile COPYs `deploy/...` from the build context, the repository root.
            } else if name.starts_with("Dockerfile") && word.starts_with("deploy/") {
                (root(), word)
            } else {
                continue;
            };
            if path.is_empty() || path.contains('$') {
                continue;
            }
            assert!(base.join(path).exists(), "{} names {word}, which does not exist", rel(&file));
            named += 1;
        }
    }
    assert!(named >= 4, "found only {named} file references under deploy/docker");
}
