use super::*;
use serde_json::json;

fn p(s: &str) -> AttrPath {
    AttrPath::parse(s).unwrap()
}

fn paths(list: &[&str]) -> Vec<AttrPath> {
    list.iter().map(|s| p(s)).collect()
}

fn user_type() -> EntityType {
    serde_json::from_value(json!({
        "name": "user",
        "attr_defs": [
            {"name": "id", "type": "id", "description": "simple identifier for this entity"},
            {"name": "uuid", "type": "uuid"},
            {"name": "created", "type": "dateTime"},
            {"name": "lastUpdated", "type": "dateTime"},
            {"name": "email", "type": "string", "length": 256, "case-sensitive": false},
            {"name": "givenName", "type": "string"},
            {"name": "primaryAddress", "type": "object", "attr_defs": [
                {"name": "city", "type": "string"},
                {"name": "country", "type": "string"},
                {"name": "geo", "type": "object", "attr_defs": [
                    {"name": "lat", "type": "decimal"},
                    {"name": "lon", "type": "decimal"}
                ]}
            ]},
            {"name": "photos", "type": "plural", "attr_defs": [
                {"name": "value", "type": "string"},
                {"name": "caption", "type": "string"},
                {"name": "tags", "type": "plural", "attr_defs": [
                    {"name": "value", "type": "string"}
                ]}
            ]},
            {"name": "prefs", "type": "json"}
        ]
    }))
    .unwrap()
}

#[test]
fn parse_accepts_every_documented_syntax() {
    let dotted = p("primaryAddress.city");
    assert_eq!(p("/primaryAddress/city"), dotted);
    assert_eq!(p("/primaryAddress.city"), dotted);
    assert_eq!(p("primaryAddress/city"), dotted);
    assert_eq!(dotted.segments(), ["primaryAddress", "city"]);
    assert_eq!(dotted.to_string(), "primaryAddress.city");
    assert!(!dotted.has_selector());
    assert_eq!("email".parse::<AttrPath>().unwrap(), p("email"));
}

#[test]
fn parse_strips_element_selectors() {
    let path = p("/statuses#5253/status");
    assert_eq!(path.segments(), ["statuses", "status"]);
    assert!(path.has_selector());
    assert_eq!(path.element(0), Some(5253));
    assert_eq!(path.element(1), None);
    assert_eq!(path.to_string(), "statuses.status");
    assert_eq!(path.to_selector_string(), "statuses#5253.status");
    assert_eq!(p("profiles#18178").segments(), ["profiles"]);
    assert_eq!(p("photos#2").element(0), Some(2));
}

#[test]
fn parse_rejects_malformed_paths() {
    assert_eq!(AttrPath::parse(""), Err(PathError::Empty));
    assert_eq!(AttrPath::parse("/"), Err(PathError::Empty));
    for bad in ["a..b", "a.", ".a", "//a", "a/", "a/.b"] {
        assert!(
            matches!(AttrPath::parse(bad), Err(PathError::EmptySegment(_))),
            "{bad}"
        );
    }
    for bad in [
        "a#",
        "#2",
        "a#x",
        "a#2#3",
        "a#-1",
        "a#99999999999999999999999",
    ] {
        assert!(
            matches!(AttrPath::parse(bad), Err(PathError::BadSelector(_))),
            "{bad}"
        );
    }
}

#[test]
fn validate_reports_dotted_paths() {
    assert_eq!(user_type().validate(), Ok(()));
    let mut t = user_type();
    t.attr_defs[6].attr_defs.as_mut().unwrap()[1].name = "city".into();
    let err = t.validate().unwrap_err();
    assert!(err.contains("primaryAddress.city"), "{err}");

    let mut t = user_type();
    t.attr_defs[7].attr_defs = None;
    assert!(t.validate().unwrap_err().contains("photos"));

    let mut t = user_type();
    t.attr_defs[4].attr_defs = Some(vec![]);
    assert!(t.validate().unwrap_err().contains("email"));

    let mut t = user_type();
    t.attr_defs[7].attr_defs.as_mut().unwrap()[2]
        .attr_defs
        .as_mut()
        .unwrap()[0]
        .name = "a.b".into();
    assert!(t.validate().unwrap_err().contains("photos.tags.a.b"));
}

#[test]
fn resolve_walks_objects_plurals_and_implicit_ids() {
    let t = user_type();
    assert_eq!(
        t.resolve(&p("primaryAddress.geo.lat")).unwrap().kind,
        "decimal"
    );
    assert_eq!(t.resolve(&p("photos#3.tags.value")).unwrap().name, "value");
    assert_eq!(t.resolve(&p("photos.id")).unwrap().kind, "id");
    assert_eq!(t.resolve(&p("photos.tags.id")).unwrap().kind, "id");
    assert!(t.resolve(&p("primaryAddress.id")).is_none());
    assert!(t.resolve(&p("email.foo")).is_none());
    assert!(t.resolve(&p("prefs.theme")).is_none());
    assert!(t.resolve(&p("nope")).is_none());
    let bare = EntityType {
        name: "bare".into(),
        attr_defs: vec![],
    };
    assert_eq!(bare.resolve(&p("lastUpdated")).unwrap().kind, "dateTime");
}

#[test]
fn read_tree_always_grants_reserved_and_element_ids() {
    let t = user_type();
    let tree = t
        .read_tree(&paths(&["photos.value", "primaryAddress.city"]))
        .unwrap();
    for r in RESERVED {
        assert!(tree.allows_fully(&p(r)), "{r}");
    }
    assert!(tree.allows_fully(&p("photos.value")));
    assert!(tree.allows_fully(&p("photos.id")));
    assert!(!tree.allows_fully(&p("photos.caption")));
    assert!(!tree.allows_fully(&p("photos")));
    assert!(tree.reaches(&p("photos")));
    assert!(tree.reaches(&p("primaryAddress")));
    assert!(!tree.reaches(&p("primaryAddress.geo")));
    assert!(!tree.reaches(&p("email")));
    assert!(!tree.allows_fully(&p("email")));
    assert!(tree.allows_fully(&p("photos#7.value")));
}

#[test]
fn path_ending_at_container_grants_everything_beneath() {
    let t = user_type();
    let tree = t.read_tree(&paths(&["primaryAddress", "photos"])).unwrap();
    assert!(tree.allows_fully(&p("primaryAddress")));
    assert!(tree.allows_fully(&p("primaryAddress.geo.lat")));
    assert!(tree.allows_fully(&p("photos.tags.value")));
    assert!(tree.allows_fully(&p("photos.anything.below")));
    // Order of entries does not matter.
    let a = t.read_tree(&paths(&["photos.value", "photos"])).unwrap();
    let b = t.read_tree(&paths(&["photos", "photos.value"])).unwrap();
    assert_eq!(a, b);
    assert!(a.allows_fully(&p("photos")));
}

#[test]
fn nested_plural_elements_keep_their_ids() {
    let t = user_type();
    let tree = t.read_tree(&paths(&["photos.tags.value"])).unwrap();
    assert!(tree.allows_fully(&p("photos.id")));
    assert!(tree.allows_fully(&p("photos.tags.id")));
    assert!(tree.allows_fully(&p("photos.tags.value")));
    assert!(!tree.reaches(&p("photos.value")));
}

#[test]
fn unknown_paths_are_errors() {
    let t = user_type();
    for bad in [
        "nope",
        "primaryAddress.zip",
        "email.x",
        "prefs.theme",
        "photos#2.value",
    ] {
        let err = t.read_tree(&paths(&[bad])).unwrap_err();
        assert_eq!(err.type_name, "user");
        assert!(
            err.to_string().ends_with("is not an attribute of user"),
            "{err}"
        );
    }
    assert_eq!(
        t.write_tree(&paths(&["primaryAddress.zip"]))
            .unwrap_err()
            .path,
        "primaryAddress.zip"
    );
    // A typo behind a fully granted ancestor is still reported.
    assert!(t.read_tree(&paths(&["photos", "photos.nope"])).is_err());
}

#[test]
fn write_tree_never_grants_reserved() {
    let t = user_type();
    let tree = t
        .write_tree(&paths(&["id", "uuid", "givenName", "photos.value"]))
        .unwrap();
    for r in RESERVED {
        assert!(!tree.reaches(&p(r)), "{r}");
    }
    assert!(tree.allows_fully(&p("givenName")));
    assert!(tree.allows_fully(&p("photos.id")));
    assert!(tree.allows_fully(&p("photos.value")));

    let read_only = t.write_tree(&[]).unwrap();
    assert!(read_only.is_empty());
    assert!(!read_only.reaches(&p("givenName")));
    assert!(read_only.child("givenName").is_none());
}

#[test]
fn full_tree_and_child() {
    let t = user_type();
    let full = t.full_tree();
    assert!(full.is_all());
    assert!(full.child("anything").unwrap().is_all());
    assert!(full.allows_fully(&p("a.b.c")));
    let tree = t.read_tree(&paths(&["primaryAddress.geo"])).unwrap();
    let addr = tree.child("primaryAddress").unwrap();
    assert!(!addr.is_all());
    assert!(addr.child("geo").unwrap().is_all());
    assert!(addr.child("geo").unwrap().child("lat").unwrap().is_all());
    assert!(addr.child("city").is_none());
    let keys: Vec<_> = addr.children().map(|(k, _)| k).collect();
    assert_eq!(keys, ["geo"]);
}

#[test]
fn subtree_is_relative_to_attribute_name() {
    let t = user_type();
    let tree = t.read_tree(&paths(&["photos.value"])).unwrap();
    let element = tree.subtree(&p("photos#2")).unwrap();
    assert!(element.allows_fully(&p("value")));
    assert!(element.allows_fully(&p("id")));
    assert!(!element.reaches(&p("caption")));
    assert!(tree.subtree(&p("email")).is_none());
    assert!(t.full_tree().subtree(&p("x.y")).unwrap().is_all());
}

#[test]
fn granted_defs_prunes_in_type_order() {
    let t = user_type();
    let tree = t
        .read_tree(&paths(&[
            "photos.tags",
            "givenName",
            "primaryAddress.geo.lat",
            "email",
        ]))
        .unwrap();
    let defs = t.granted_defs(&tree);
    let names: Vec<_> = defs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "uuid",
            "created",
            "lastUpdated",
            "email",
            "givenName",
            "primaryAddress",
            "photos"
        ]
    );
    assert_eq!(defs[4].extra["length"], json!(256));
    let addr = serde_json::to_value(&defs[6]).unwrap();
    assert_eq!(
        addr,
        json!({"name": "primaryAddress", "type": "object", "attr_defs": [
            {"name": "geo", "type": "object", "attr_defs": [{"name": "lat", "type": "decimal"}]}
        ]})
    );
    let photos = defs[7].attr_defs.as_ref().unwrap();
    assert_eq!(photos.len(), 1);
    assert_eq!(photos[0], t.attr_defs[7].attr_defs.as_ref().unwrap()[2]);

    assert_eq!(t.granted_defs(&t.full_tree()), t.attr_defs);
    assert!(t.granted_defs(&t.write_tree(&[]).unwrap()).is_empty());
}

#[test]
fn child_index_finds_exactly_the_children() {
    // Names that share their first eight bytes, lengths around eight,
    // the empty name and non-ASCII: the cases a word-and-length index
    // could confuse.
    let names = [
        "",
        "a",
        "id",
        "statusCr",
        "statusCreated",
        "statusCreatee",
        "statusCreatedAt",
        "primaryAddress",
        "caf\u{e9}",
        "x y",
        "01234567",
        "012345678",
        // Same first and last eight bytes, longer than sixteen: only the
        // middle tells them apart.
        "abcdefgh_1_abcdefgh",
        "abcdefgh_2_abcdefgh",
        // Same first and last eight bytes at sixteen and below.
        "abcdefgh12345678",
        "abcdefghi2345678",
        "abcdefgh2345678",
    ];
    let defs: Vec<serde_json::Value> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| json!({"name": n, "type": "string"}))
        .collect();
    let t: EntityType = serde_json::from_value(json!({"name": "t", "attr_defs": defs})).unwrap();
    let granted: Vec<&str> = names.iter().copied().filter(|n| !n.is_empty()).collect();
    for take in [0, 1, 2, 5, granted.len()] {
        let tree = t.read_tree(&paths(&granted[..take])).unwrap();
        for (name, sub) in tree.children() {
            assert!(std::ptr::eq(tree.child(name).unwrap(), sub), "{name}");
            assert!(std::ptr::eq(
                tree.child_bytes(name.as_bytes()).unwrap(),
                sub
            ));
        }
        for name in names.iter().chain(&[
            "statusCreatedA",
            "b",
            "caf",
            "0123456",
            "abcdefgh_3_abcdefgh",
            "abcdefgh_1_abcdefgi",
            "abcdefgh1234567",
        ]) {
            let listed = tree.children().any(|(k, _)| k == *name);
            assert_eq!(tree.child(name).is_some(), listed, "{name} with {take}");
        }
    }
    assert!(AccessTree::all().child("anything").unwrap().is_all());
    assert!(AccessTree::none().child("").is_none());
}
