//! `local-sproutvideo`: the local SproutVideo as a standalone server.
//!
//! `local-sproutvideo [--listen 127.0.0.1:4020] [--keys k1,k2] [--demo]`
//! (env `LOCAL_SPROUT_ADDR`, `LOCAL_SPROUT_KEYS`). `--demo` seeds demo videos, logins and sessions.

use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr = std::env::var("LOCAL_SPROUT_ADDR").unwrap_or_else(|_| "127.0.0.1:4020".into());
    let mut keys = std::env::var("LOCAL_SPROUT_KEYS").unwrap_or_default();
    let mut demo = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().unwrap_or(addr),
            "--keys" => keys = args.next().unwrap_or_default(),
            "--demo" => demo = true,
            "-h" | "--help" => {
                println!("local-sproutvideo [--listen ADDR] [--keys K1,K2] [--demo]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    let sv = LocalSprout::new(SproutBehaviour {
        api_keys: keys.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let bound = listener.local_addr()?;
    sv.update_behaviour(|b| b.public_base = format!("http://{bound}/v1")).await;
    if demo {
        seed_demo(&sv).await;
    }
    println!("local SproutVideo listening on http://{bound}/v1");
    axum::serve(listener, sv.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn seed_demo(sv: &LocalSprout) {
    let pricing = sv
        .add_video(VideoSeed {
            id: Some("d1a2b3c4d5e6f7a8b9".into()),
            title: "Pricing walkthrough".into(),
            duration: Some(300.0),
            tags: vec!["pricing".into()],
            require_email: true,
        })
        .await;
    let intro = sv
        .add_video(VideoSeed {
            id: Some("a0b1c2d3e4f5a6b7c8".into()),
            title: "Welcome to the course".into(),
            duration: Some(120.0),
            tags: vec![],
            require_email: true,
        })
        .await;
    sv.add_login("member.one@example.com").await;
    sv.add_login("member.two@example.com").await;
    for (video, email, secs) in [
        (&pricing, Some("ada.lovelace@example.com"), 270.0),
        (&intro, Some("ada.lovelace@example.com"), 60.0),
        (&intro, Some("grace.hopper@example.com"), 118.0),
        (&pricing, None, 30.0),
    ] {
        sv.add_session(SessionSeed {
            video_id: video.clone(),
            vemail: email.map(str::to_string),
            seconds_watched: Some(secs),
            ..Default::default()
        })
        .await;
    }
}
