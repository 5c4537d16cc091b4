//! `kyc migrate`: creates the database when missing; safe twice and from two processes at once.

use crate::harness::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_safe_to_race_and_repeat() {
    let db = TestDb::reserve();
    let (a, b) = tokio::join!(
        kyc::storage::migrate::run(&db.url),
        kyc::storage::migrate::run(&db.url)
    );
    let (a, b) = (a.expect("first migrate"), b.expect("second migrate"));
    // Exactly one of the racers applied each migration.
    let mut applied = [a, b].concat();
    applied.sort();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations folder")
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
        })
        .count();
    let every: Vec<i32> = (1..=i32::try_from(files).expect("a few migrations")).collect();
    assert_eq!(applied, every, "each migration file applied exactly once");

    let again = kyc::storage::migrate::run(&db.url)
        .await
        .expect("third migrate");
    assert!(again.is_empty(), "nothing left to apply: {again:?}");

    let client = db.client().await;
    for table in ["api_clients", "onboardings", "verifications"] {
        let found = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_name = $1",
                &[&table],
            )
            .await
            .expect("catalog query");
        assert!(found.is_some(), "{table} exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_databases_come_from_the_migrated_template() {
    let db = TestDb::create().await;
    let client = db.client().await;
    let versions: i64 = client
        .query_one("SELECT count(*) FROM kyc_schema_migrations", &[])
        .await
        .expect("migrations table")
        .get(0);
    assert!(versions >= 1);
}
