use hookdock_testkit::FakeGitHub;
use serde_json::Value;

use crate::{client, header};

#[tokio::test]
async fn oauth_web_flow_issues_a_token_the_api_accepts() {
    let github = FakeGitHub::start().await;
    github.oauth_app("Iv1.client", "client-secret");
    github.set_oauth_user("mona");
    let authorize = format!(
        "{}/login/oauth/authorize?client_id=Iv1.client&redirect_uri=http%3A%2F%2Fapp.test%2Fcallback&state=xyz&scope=admin%3Arepo_hook%20read%3Auser",
        github.url()
    );
    let response = client().get(authorize).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = header(response.headers(), "location").to_owned();
    let url = reqwest::Url::parse(&location).unwrap();
    assert_eq!(url.path(), "/callback");
    let params: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(params["state"], "xyz");

    let exchange = |code: String| {
        client()
            .post(format!("{}/login/oauth/access_token", github.url()))
            .header("accept", "application/json")
            .form(&[
                ("client_id", "Iv1.client"),
                ("client_secret", "client-secret"),
                ("code", code.as_str()),
            ])
            .send()
    };
    let token: Value = exchange(params["code"].clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["scope"], "admin:repo_hook,read:user");
    let access = token["access_token"].as_str().unwrap().to_owned();

    let user = client()
        .get(format!("{}/user", github.url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(user.headers(), "x-oauth-scopes"),
        "admin:repo_hook, read:user"
    );
    let user: Value = user.json().await.unwrap();
    assert_eq!(user["login"], "mona");

    // A code works once.
    let again: Value = exchange(params["code"].clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["error"], "bad_verification_code");
    assert!(github.contract_violations().is_empty());
    assert!(github.fake_bugs().is_empty(), "{:?}", github.fake_bugs());
}
