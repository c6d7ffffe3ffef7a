//! The task registry: task and group specs by name, from the suites built
//! into the binary and from user directories layered on top, and the
//! expansion of requested names (tasks, groups, tags) into task specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::TaskError;
use super::parse::{parse_suite_file, parse_suite_yaml};
use super::spec::{GroupSpec, SuiteFile, TaskSpec};

/// The suite files shipped with slmbench, embedded at build time.
const BUILTIN_SUITES: &[(&str, &str)] = &[
    (
        "suites/arc_challenge.yaml",
        include_str!("../../suites/arc_challenge.yaml"),
    ),
    (
        "suites/arc_easy.yaml",
        include_str!("../../suites/arc_easy.yaml"),
    ),
    ("suites/cola.yaml", include_str!("../../suites/cola.yaml")),
    ("suites/copa.yaml", include_str!("../../suites/copa.yaml")),
    (
        "suites/default.yaml",
        include_str!("../../suites/default.yaml"),
    ),
    ("suites/glue.yaml", include_str!("../../suites/glue.yaml")),
    ("suites/gsm8k.yaml", include_str!("../../suites/gsm8k.yaml")),
    (
        "suites/hellaswag.yaml",
        include_str!("../../suites/hellaswag.yaml"),
    ),
    ("suites/mrpc.yaml", include_str!("../../suites/mrpc.yaml")),
    ("suites/piqa.yaml", include_str!("../../suites/piqa.yaml")),
    ("suites/qnli.yaml", include_str!("../../suites/qnli.yaml")),
    ("suites/rte.yaml", include_str!("../../suites/rte.yaml")),
    ("suites/sst2.yaml", include_str!("../../suites/sst2.yaml")),
    ("suites/wnli.yaml", include_str!("../../suites/wnli.yaml")),
];

/// Task and group specs by name.
#[derive(Debug, Clone, Default)]
pub struct TaskRegistry {
    tasks: BTreeMap<String, TaskSpec>,
    groups: BTreeMap<String, GroupSpec>,
    /// Names sealed as built-in (name → its file): a later file may not
    /// redefine them.
    builtin: BTreeMap<String, String>,
}

/// The registry of the suites built into slmbench.
pub fn builtin_registry() -> Result<TaskRegistry, TaskError> {
    let mut layer = Layer::default();
    for (file, text) in BUILTIN_SUITES {
        layer.add(parse_suite_yaml(file, text)?)?;
    }
    let mut reg = TaskRegistry::default();
    reg.merge(layer)?;
    reg.seal_builtins();
    Ok(reg)
}

/// A registry of the task and group files (`*.yaml`, `*.yml`) under `dir`, recursively.
pub fn load_suite_dir(dir: &Path) -> Result<TaskRegistry, TaskError> {
    let mut reg = TaskRegistry::default();
    reg.add_dir(dir)?;
    Ok(reg)
}

/// Reads one task file (not a group file).
pub fn load_task_file(path: &Path) -> Result<TaskSpec, TaskError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: file.clone(),
        source,
    })?;
    match parse_suite_file(path, &text)? {
        SuiteFile::Task(t) => Ok(*t),
        SuiteFile::Group(g) => Err(TaskError::Spec {
            file,
            key: "group".into(),
            message: format!("this is the group file of `{}`, not a task file", g.name),
            fix: "load it with load_suite_dir, or pass a task file".into(),
        }),
    }
}

/// Files loaded together; names must be unique within it.
#[derive(Default)]
struct Layer {
    tasks: BTreeMap<String, TaskSpec>,
    groups: BTreeMap<String, GroupSpec>,
}

impl Layer {
    fn add(&mut self, file: SuiteFile) -> Result<(), TaskError> {
        let (name, source) = match &file {
            SuiteFile::Task(t) => (t.name.clone(), t.source.clone()),
            SuiteFile::Group(g) => (g.name.clone(), g.source.clone()),
        };
        let earlier = self
            .tasks
            .get(&name)
            .map(|t| t.source.clone())
            .or_else(|| self.groups.get(&name).map(|g| g.source.clone()));
        if let Some(earlier) = earlier {
            return Err(TaskError::Spec {
                file: source,
                key: if matches!(file, SuiteFile::Task(_)) {
                    "task"
                } else {
                    "group"
                }
                .into(),
                message: format!("`{name}` is also defined in {earlier}"),
                fix: "rename one of them".into(),
            });
        }
        match file {
            SuiteFile::Task(t) => {
                self.tasks.insert(name, *t);
            }
            SuiteFile::Group(g) => {
                self.groups.insert(name, g);
            }
        }
        Ok(())
    }
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn merge(&mut self, layer: Layer) -> Result<(), TaskError> {
        let names = layer
            .tasks
            .iter()
            .map(|(n, t)| (n, &t.source, "task"))
            .chain(layer.groups.iter().map(|(n, g)| (n, &g.source, "group")));
        for (name, source, key) in names {
            if let Some(builtin) = self.builtin.get(name) {
                return Err(TaskError::Spec {
                    file: source.clone(),
                    key: key.into(),
                    message: format!("`{name}` is already a built-in name ({builtin})"),
                    fix: "give it another name (built-in tasks and groups cannot be redefined)"
                        .into(),
                });
            }
        }
        for (name, t) in layer.tasks {
            self.groups.remove(&name);
            self.tasks.insert(name, t);
        }
        for (name, g) in layer.groups {
            self.tasks.remove(&name);
            self.groups.insert(name, g);
        }
        Ok(())
    }

    /// Seals every name defined so far as built-in: later files that define
    /// one again are refused rather than silently shadowing it.
    pub fn seal_builtins(&mut self) {
        let sources = self
            .tasks
            .iter()
            .map(|(n, t)| (n.clone(), t.source.clone()))
            .chain(
                self.groups
                    .iter()
                    .map(|(n, g)| (n.clone(), g.source.clone())),
            );
        self.builtin.extend(sources.collect::<Vec<_>>());
    }

    /// Adds the task and group files under `dir` (recursively), replacing
    /// same-named entries already present; a built-in name is refused.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), TaskError> {
        let mut files = Vec::new();
        collect_yaml(dir, &mut files)?;
        files.sort();
        let mut layer = Layer::default();
        for path in files {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| TaskError::Io {
                path: file.clone(),
                source,
            })?;
            layer.add(parse_suite_file(&path, &text)?)?;
        }
        self.merge(layer)
    }

    /// Adds one suite file read from `path` (its `include:`s relative to
    /// it), replacing a same-named entry.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), TaskError> {
        let mut layer = Layer::default();
        layer.add(parse_suite_file(path, text)?)?;
        self.merge(layer)
    }

    /// Adds one suite file given as text (`file` names it in messages),
    /// replacing a same-named entry.
    pub fn add_yaml(&mut self, file: &str, text: &str) -> Result<(), TaskError> {
        let mut layer = Layer::default();
        layer.add(parse_suite_yaml(file, text)?)?;
        self.merge(layer)
    }

    /// The task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.get(name)
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.get(name)
    }

    /// All task names, sorted.
    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.keys().map(String::as_str).collect()
    }

    /// Every name `resolve` accepts (tasks, groups, tags), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tasks
            .keys()
            .chain(self.groups.keys())
            .cloned()
            .collect();
        names.extend(self.tasks.values().flat_map(|t| t.tags.iter().cloned()));
        names.sort();
        names.dedup();
        names
    }

    /// Expands task, group and tag names into task specs, in order, each task once.
    /// A group file's list wins over a tag of the same name.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<TaskSpec>, TaskError> {
        let mut out: Vec<TaskSpec> = Vec::new();
        for name in names {
            let mut stack = Vec::new();
            self.expand(name, None, &mut stack, &mut out)?;
        }
        Ok(out)
    }

    fn expand(
        &self,
        name: &str,
        parent: Option<&GroupSpec>,
        stack: &mut Vec<String>,
        out: &mut Vec<TaskSpec>,
    ) -> Result<(), TaskError> {
        let push = |t: &TaskSpec, out: &mut Vec<TaskSpec>| {
            if !out.iter().any(|o| o.name == t.name) {
                out.push(t.clone());
            }
        };
        if let Some(t) = self.tasks.get(name) {
            push(t, out);
            return Ok(());
        }
        if let Some(g) = self.groups.get(name) {
            if stack.iter().any(|s| s == name) {
                return Err(TaskError::Spec {
                    file: g.source.clone(),
                    key: "task".into(),
                    message: format!(
                        "group `{name}` includes itself (via {})",
                        stack.join(" -> ")
                    ),
                    fix: "remove the cycle".into(),
                });
            }
            stack.push(name.to_string());
            for member in &g.tasks {
                self.expand(member, Some(g), stack, out)?;
            }
            stack.pop();
            return Ok(());
        }
        let tagged: Vec<&TaskSpec> = self
            .tasks
            .values()
            .filter(|t| t.tags.iter().any(|x| x == name))
            .collect();
        if !tagged.is_empty() {
            for t in tagged {
                push(t, out);
            }
            return Ok(());
        }
        let known = self.names().join(", ");
        Err(match parent {
            Some(g) => TaskError::Spec {
                file: g.source.clone(),
                key: "task".into(),
                message: format!("group `{}` lists unknown task `{name}`", g.name),
                fix: format!("use one of: {known}"),
            },
            None => TaskError::UnknownName {
                name: name.to_string(),
                known,
            },
        })
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TaskError> {
    let io = |source| TaskError::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
