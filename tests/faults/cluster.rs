//! Case 7: a three-node RabbitMQ cluster of the suite's own. The quorum queues are replicated
//! on the three nodes; the node that leads `kyc.webhooks` is stopped under a steady stream,
//! then started again (and then the node kyc connected to, if that was another one). Ingest
//! carries on or spools, nothing confirmed is lost.

use std::time::Duration;

use crate::harness::ledger::Ledger;
use crate::harness::{Spawn, TestApp, eventually};
use crate::nodes::{Cluster, beam_processes};
use crate::{DEADLINE, SETTLE, metric, serial, sessions, spool_rows, stream_of};

const PER_SECOND: u32 = 50;
/// How long a stopped node stays down.
const DOWN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_queues_leader_stopped_in_a_three_node_cluster() {
    let _serial = serial().await;
    let cluster = Cluster::start().await;
    let urls = cluster.amqp_urls();
    // `kyc run` with every node's address (KYC_AMQP_URL, comma-separated), first one first.
    let app = TestApp::start(Spawn {
        worker: true,
        amqp_url: &urls,
        ..Spawn::default()
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "kyc connected to the cluster",
        || async { (metric(&app.metrics().await, "kyc_broker_connected") == 1.0).then_some(()) },
    )
    .await;
    let topology = app.config.topology();
    let first = &cluster.nodes[0];
    for queue in topology.queues() {
        let (members, _) = cluster.quorum_queue(first, &queue).await;
        assert_eq!(
            members.len(),
            3,
            "{queue} is replicated on three nodes: {members:?}"
        );
    }
    let (_, leader) = cluster.quorum_queue(first, &topology.main_queue()).await;
    // Stopped in turn: the leader of kyc.webhooks, then (if it was another) the node kyc
    // connected to, so that kyc fails over to the next address too.
    let mut victims = vec![leader.clone()];
    if leader != first.name {
        victims.push(first.name.clone());
    }

    let sessions = sessions(&app, "cluster", 20).await;
    let seconds = 3 + victims.len() as u64 * (DOWN.as_secs() + 12) + 5;
    let count = usize::try_from(seconds * u64::from(PER_SECOND)).expect("small");
    let webhooks = stream_of(&sessions, "cluster", count);
    let ledger = Ledger::new(
        "7. three-node cluster: the leader of kyc.webhooks stopped (stop_app) under a stream",
        &app.base_url,
        DEADLINE,
    );
    let fault = async {
        let mut leaders = Vec::new();
        for victim in &victims {
            let answered = ledger.answered_ok();
            eventually(Duration::from_secs(60), "the stream under way", || async {
                (ledger.answered_ok() >= answered + u64::from(PER_SECOND) * 3).then_some(())
            })
            .await;
            let node = cluster.node(victim);
            node.stop_app().await;
            tokio::time::sleep(DOWN).await; // the fault's length
            let running = cluster
                .nodes
                .iter()
                .find(|n| n.name != *victim)
                .expect("a node");
            leaders.push(
                cluster
                    .quorum_queue(running, &topology.main_queue())
                    .await
                    .1,
            );
            node.start_app().await;
        }
        leaders
    };
    let ((), leaders) = tokio::join!(ledger.stream(webhooks, PER_SECOND), fault);

    eventually(SETTLE, "the spool drained", || async {
        (spool_rows(&app).await == 0).then_some(())
    })
    .await;
    let report = ledger.settle(app.db(), SETTLE).await;
    assert_eq!(report.applied, count, "every webhook applied");
    assert_eq!(
        report.other, 0,
        "ingest carried on, or spooled: every answer 200"
    );
    let metrics = app.metrics().await;
    ledger.note(&format!(
        "stopped {victims:?} in turn; the leader meanwhile {leaders:?}; {} webhooks spooled",
        metric(&metrics, "kyc_spooled_total")
    ));
    for queue in topology.queues() {
        let (members, _) = cluster.quorum_queue(first, &queue).await;
        assert_eq!(
            members.len(),
            3,
            "{queue} still on three nodes: {members:?}"
        );
    }

    drop(app);
    drop(cluster);
    let left = beam_processes();
    assert!(
        !left.contains("kycc"),
        "the suite's nodes are stopped: {left}"
    );
    assert!(left.contains("beam.smp"), "the main node still runs");
}
