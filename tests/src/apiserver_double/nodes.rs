//! The part of the API server the stand-in reproduces: Node objects in memory, who may read
//! and write them (the Node authorizer with `AuthorizeNodeWithSelectors`, default since 1.32,
//! plus the NodeRestriction admission plugin kubeadm enables), and answers encoded as the real
//! API server encodes them (`Status` objects for failures).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use time::OffsetDateTime;

/// Who sent a request: from the client certificate (CN = user, O = groups), or anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// Groups with cluster-admin rights in a kubeadm cluster: `admin.conf` carries
/// `kubeadm:cluster-admins` (1.29+), `super-admin.conf` `system:masters`.
const ADMIN_GROUPS: [&str; 2] = ["system:masters", "kubeadm:cluster-admins"];

impl User {
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The node a kubelet credential belongs to: `system:node:<name>` in group `system:nodes`.
    pub fn node(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }

    pub fn is_admin(&self) -> bool {
        self.groups
            .iter()
            .any(|g| ADMIN_GROUPS.contains(&g.as_str()))
    }
}

/// One answer: status code and body.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Json(u16, Value),
    Text(u16, String),
}

impl Reply {
    pub fn code(&self) -> u16 {
        match self {
            Reply::Json(c, _) | Reply::Text(c, _) => *c,
        }
    }
}

/// A failure as the API server encodes it (`metav1.Status`).
fn status(code: u16, reason: &str, message: String, name: Option<&str>) -> Reply {
    let details = match name {
        Some(n) => json!({ "name": n, "kind": "nodes" }),
        None => json!({}),
    };
    Reply::Json(
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }),
    )
}

fn forbidden(user: &User, verb: &str, resource: &str, name: &str, why: &str) -> Reply {
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    };
    status(
        403,
        "Forbidden",
        format!(
            "{resource} \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"\" at the cluster scope{why}",
            user.name
        ),
        Some(name),
    )
}

/// The Node authorizer and NodeRestriction: a node reads and writes only its own Node; an
/// admin anything; everyone else nothing (RBAC grants anonymous users no access to nodes).
fn authorize(user: &User, verb: &str, resource: &str, name: &str) -> Result<(), Reply> {
    if user.is_admin() {
        return Ok(());
    }
    match user.node() {
        Some(node) if node == name => Ok(()),
        Some(node) if verb == "get" => Err(forbidden(
            user,
            verb,
            resource,
            name,
            &format!("node '{node}' cannot read '{name}', only its own Node object"),
        )),
        Some(node) => Err(status(
            403,
            "Forbidden",
            format!("{resource} \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""),
            Some(name),
        )),
        None => Err(forbidden(user, verb, resource, name, "")),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The Node objects, in memory (no etcd: a restarted stand-in knows no nodes until their
/// kubelets register again).
#[derive(Debug, Default)]
pub struct Nodes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<String, Value>,
    resource_version: u64,
}

impl Nodes {
    /// Answer one request. `content_type` matters for PATCH only.
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        user: &User,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Reply {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            // Public to everyone (`system:public-info-viewer`).
            ("GET", ["healthz" | "livez" | "readyz"]) => Reply::Text(200, "ok".into()),
            ("GET", ["api", "v1", "nodes", name]) => self.get(user, name),
            ("POST", ["api", "v1", "nodes"]) => self.create(user, body, now),
            ("PATCH", ["api", "v1", "nodes", name, "status"]) => {
                self.patch_status(user, name, content_type, body)
            }
            _ => status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_found(name: &str) -> Reply {
        status(
            404,
            "NotFound",
            format!("nodes \"{name}\" not found"),
            Some(name),
        )
    }

    fn get(&self, user: &User, name: &str) -> Reply {
        if let Err(r) = authorize(user, "get", "nodes", name) {
            return r;
        }
        match self.lock().nodes.get(name) {
            Some(n) => Reply::Json(200, n.clone()),
            None => Self::not_found(name),
        }
    }

    fn create(&self, user: &User, body: &[u8], now: OffsetDateTime) -> Reply {
        let mut node: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return status(
                    400,
                    "BadRequest",
                    format!("the body is not a Node object: {e}"),
                    None,
                )
            }
        };
        let Some(name) = node["metadata"]["name"].as_str().map(str::to_owned) else {
            return status(
                422,
                "Invalid",
                "Node \"\" is invalid: metadata.name: Required value: name or generateName is required".into(),
                None,
            );
        };
        if let Err(r) = authorize(user, "create", "nodes", &name) {
            return r;
        }
        let mut inner = self.lock();
        if inner.nodes.contains_key(&name) {
            return status(
                409,
                "AlreadyExists",
                format!("nodes \"{name}\" already exists"),
                Some(&name),
            );
        }
        inner.resource_version += 1;
        let uid = nodeimg_common::digest::Sha256Hex::of_bytes(
            format!("{name}/{}", now.unix_timestamp_nanos()).as_bytes(),
        )
        .to_string();
        node["kind"] = json!("Node");
        node["apiVersion"] = json!("v1");
        node["metadata"]["uid"] = json!(format!(
            "{}-{}-{}-{}-{}",
            &uid[..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..32]
        ));
        node["metadata"]["creationTimestamp"] = json!(rfc3339(now));
        node["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner.nodes.insert(name, node.clone());
        Reply::Json(201, node)
    }

    /// A strategic merge patch of the status subresource, as the kubelet sends it:
    /// `status.conditions` merge by `type`, other status fields are replaced.
    fn patch_status(&self, user: &User, name: &str, content_type: &str, body: &[u8]) -> Reply {
        if let Err(r) = authorize(user, "patch", "nodes", name) {
            return r;
        }
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media != "application/strategic-merge-patch+json" {
            return status(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/strategic-merge-patch+json (the stand-in supports only this one), got `{media}`"),
                None,
            );
        }
        let patch: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", format!("invalid patch: {e}"), None),
        };
        let mut inner = self.lock();
        if !inner.nodes.contains_key(name) {
            return Self::not_found(name);
        }
        inner.resource_version += 1;
        let rv = inner.resource_version.to_string();
        let node = inner.nodes.get_mut(name).expect("checked above");
        if let Some(fields) = patch["status"].as_object() {
            if !node["status"].is_object() {
                node["status"] = json!({});
            }
            for (key, value) in fields {
                if key == "conditions" {
                    merge_conditions(&mut node["status"]["conditions"], value);
                } else {
                    node["status"][key] = value.clone();
                }
            }
        }
        node["metadata"]["resourceVersion"] = json!(rv);
        Reply::Json(200, node.clone())
    }
}

/// `conditions` has patch merge key `type`: a patched condition replaces the one of its type.
fn merge_conditions(current: &mut Value, patch: &Value) {
    if !current.is_array() {
        *current = json!([]);
    }
    let list = current.as_array_mut().expect("made an array above");
    for cond in patch.as_array().into_iter().flatten() {
        match list.iter_mut().find(|c| c["type"] == cond["type"]) {
            Some(existing) => {
                if let (Some(e), Some(p)) = (existing.as_object_mut(), cond.as_object()) {
                    for (k, v) in p {
                        e.insert(k.clone(), v.clone());
                    }
                }
            }
            None => list.push(cond.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_user(n: &str) -> User {
        User {
            name: format!("system:node:{n}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["kubeadm:cluster-admins".into()],
        }
    }

    const SMP: &str = "application/strategic-merge-patch+json";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn ready(status: &str, reason: &str) -> Vec<u8> {
        json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "reason": reason, "message": "m"}
        ]}})
        .to_string()
        .into_bytes()
    }

    fn json_of(r: Reply) -> (u16, Value) {
        match r {
            Reply::Json(c, v) => (c, v),
            Reply::Text(c, t) => panic!("text answer {c}: {t}"),
        }
    }

    #[test]
    fn register_post_status_and_read_back() {
        let n = Nodes::default();
        let a = node_user("a");
        let (code, v) = json_of(n.handle("GET", "/api/v1/nodes/a", "", &a, b"", now()));
        assert_eq!(code, 404);
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["message"], "nodes \"a\" not found");
        // Status of an unregistered node: 404 too.
        assert_eq!(
            n.handle(
                "PATCH",
                "/api/v1/nodes/a/status",
                SMP,
                &a,
                &ready("True", "KubeletReady"),
                now()
            )
            .code(),
            404
        );
        let body = br#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"a"}}"#;
        let (code, v) = json_of(n.handle("POST", "/api/v1/nodes", "", &a, body, now()));
        assert_eq!(code, 201);
        assert_eq!(v["metadata"]["creationTimestamp"], "2027-01-15T08:00:00Z");
        assert_eq!(v["metadata"]["uid"].as_str().unwrap().len(), 36);
        let (code, v) = json_of(n.handle("POST", "/api/v1/nodes", "", &a, body, now()));
        assert_eq!((code, v["reason"].as_str()), (409, Some("AlreadyExists")));

        let (code, _) = json_of(n.handle(
            "PATCH",
            "/api/v1/nodes/a/status",
            SMP,
            &a,
            &ready("True", "KubeletReady"),
            now(),
        ));
        assert_eq!(code, 200);
        let mem =
            json!({"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}});
        n.handle(
            "PATCH",
            "/api/v1/nodes/a/status",
            SMP,
            &a,
            mem.to_string().as_bytes(),
            now(),
        );
        n.handle(
            "PATCH",
            "/api/v1/nodes/a/status",
            SMP,
            &a,
            &ready("False", "KubeletNotReady"),
            now(),
        );
        let (code, v) = json_of(n.handle("GET", "/api/v1/nodes/a", "", &a, b"", now()));
        assert_eq!(code, 200);
        let conds = v["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2, "{v}");
        assert_eq!(conds[0]["type"], "Ready");
        assert_eq!(conds[0]["status"], "False", "the last posted Ready wins");
        assert_eq!(conds[0]["reason"], "KubeletNotReady");
        assert_eq!(v["metadata"]["resourceVersion"], "4");
        // A JSON merge patch would replace the whole list: not what the kubelet sends.
        let r = n.handle(
            "PATCH",
            "/api/v1/nodes/a/status",
            "application/merge-patch+json",
            &a,
            &ready("True", "x"),
            now(),
        );
        assert_eq!(r.code(), 415);
    }

    #[test]
    fn nodes_only_touch_their_own_node_admins_everything() {
        let n = Nodes::default();
        let body = br#"{"metadata":{"name":"a"}}"#;
        let (code, v) =
            json_of(n.handle("POST", "/api/v1/nodes", "", &node_user("b"), body, now()));
        assert_eq!(code, 403);
        assert_eq!(
            v["message"],
            "nodes \"a\" is forbidden: node \"b\" is not allowed to modify node \"a\""
        );
        assert_eq!(
            n.handle("POST", "/api/v1/nodes", "", &admin(), body, now())
                .code(),
            201
        );
        let (code, v) =
            json_of(n.handle("GET", "/api/v1/nodes/a", "", &node_user("b"), b"", now()));
        assert_eq!(code, 403);
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(
            v["message"],
            "nodes \"a\" is forbidden: User \"system:node:b\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'b' cannot read 'a', only its own Node object"
        );
        let (code, v) =
            json_of(n.handle("GET", "/api/v1/nodes/a", "", &User::anonymous(), b"", now()));
        assert_eq!(code, 403);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:anonymous\" cannot get"));
        // The CN alone does not make a node: the group does.
        let impostor = User {
            name: "system:node:a".into(),
            groups: vec![],
        };
        assert_eq!(
            n.handle("GET", "/api/v1/nodes/a", "", &impostor, b"", now())
                .code(),
            403
        );
        assert_eq!(
            n.handle("GET", "/api/v1/nodes/a", "", &admin(), b"", now())
                .code(),
            200
        );
        assert_eq!(
            n.handle(
                "PATCH",
                "/api/v1/nodes/a/status",
                SMP,
                &node_user("b"),
                &ready("True", "x"),
                now()
            )
            .code(),
            403
        );
        assert_eq!(
            n.handle("GET", "/healthz", "", &User::anonymous(), b"", now()),
            Reply::Text(200, "ok".into())
        );
        assert_eq!(
            n.handle("DELETE", "/api/v1/nodes/a", "", &admin(), b"", now())
                .code(),
            404
        );
    }
}
