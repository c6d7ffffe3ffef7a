//! The Hub's Parquet layout (`<dataset_path>/<dataset_name>/<split>-*.parquet`)
//! gives the same documents and requests as the JSON Lines layout.

use crate::common;

use slmbench::task::{build_instances, BuildOptions, TaskDocs};

#[test]
fn parquet_shards_equal_jsonl() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let reg = slmbench::task::builtin_registry().expect("registry");
    for (task, rel) in [
        ("copa", "aps/super_glue/copa/validation.jsonl"),
        ("arc_easy", "allenai/ai2_arc/ARC-Easy/test.jsonl"),
    ] {
        let spec = reg.task(task).expect("task").clone();
        let rows = common::read_jsonl(&shared.join("data").join(rel));
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(rel).parent().expect("parent").to_path_buf();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let split = spec.eval_split().to_string();
        // Two shards, read back in name order.
        let half = rows.len() / 2;
        slmbench::task::parquet::write_rows(
            &rows[..half],
            &dir.join(format!("{split}-00000-of-00002.parquet")),
        )
        .expect("write shard 0");
        slmbench::task::parquet::write_rows(
            &rows[half..],
            &dir.join(format!("{split}-00001-of-00002.parquet")),
        )
        .expect("write shard 1");
        let from_parquet =
            TaskDocs::load(&spec, &slmbench::plan::data_dir(tmp.path()), 0).expect("parquet docs");
        let from_jsonl = TaskDocs::load(&spec, &slmbench::plan::data_dir(&shared.join("data")), 0)
            .expect("jsonl docs");
        let opts = BuildOptions::default();
        let a = build_instances(&spec, &from_parquet, &opts).expect("parquet instances");
        let b = build_instances(&spec, &from_jsonl, &opts).expect("jsonl instances");
        assert_eq!(a.len(), rows.len(), "{task}");
        assert_eq!(a, b, "{task}");
    }
}
