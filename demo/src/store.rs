//! The in-memory store and its endpoints.

use super::*;

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// The in-memory user records and the Capture endpoint logic over them.
pub struct Store {
    /// Ordered by id, which is also the default result order of `entity.find`.
    pub(crate) records: BTreeMap<i64, Value>,
    pub(crate) by_uuid: HashMap<String, i64>,
    pub(crate) next_id: i64,
    pub(crate) next_element_id: i64,
    pub(crate) rng: Lcg,
    pub(crate) tokens: Tokens,
}

impl Store {
    /// Generates `records` users with ids `1..=records`; record `i` is the same
    /// whatever `records` is.
    pub fn generate(records: usize) -> Self {
        let mut store = Store {
            records: BTreeMap::new(),
            by_uuid: HashMap::with_capacity(records),
            next_id: 1,
            next_element_id: 1,
            rng: Lcg::seeded(0x5EED_0000_DE30_0001),
            tokens: Tokens::new(),
        };
        for _ in 0..records {
            let id = store.next_id;
            store.next_id += 1;
            let record = generate_user(id, &mut store.next_element_id);
            store.insert(id, record);
        }
        store
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn insert(&mut self, id: i64, record: Value) {
        if let Some(uuid) = record.get("uuid").and_then(Value::as_str) {
            self.by_uuid.insert(uuid.to_string(), id);
        }
        self.records.insert(id, record);
    }

    /// Serves one Capture call. Always returns a Capture envelope: either
    /// `stat: ok` with the endpoint's payload or a `stat: error` object.
    pub fn handle(&mut self, endpoint: &str, params: &Params) -> Value {
        let name = endpoint.trim_start_matches('/').trim_end_matches('/');
        let with_token;
        let params = match params.get("access_token") {
            Some(token) if matches!(name, "entity" | "entity.update" | "entity.delete") => {
                match self.tokens.user(token) {
                    Ok(uuid) => {
                        // A token reaches only its own user's record.
                        with_token = params.for_user(uuid);
                        &with_token
                    }
                    Err(e) => return e.to_json(),
                }
            }
            Some(_) => {
                return ApiError::new(
                    403,
                    "client_permission_error",
                    format!("/{name} cannot be called with an access token"),
                    None,
                )
                .to_json()
            }
            None => params,
        };
        let result = match name {
            "access/getAuthorizationCode" => {
                self.select_uuid(params).map(|u| self.tokens.code_for(&u))
            }
            "access/getAccessToken" => self.select_uuid(params).map(|u| self.tokens.access_for(&u)),
            "oauth/token" => self.tokens.exchange(params).map(|(uuid, mut answer)| {
                if let (Some(id), Value::Object(m)) = (self.by_uuid.get(&uuid), &mut answer) {
                    if let Some(record) = self.records.get(id) {
                        m.insert("capture_user".into(), record.clone());
                    }
                }
                answer
            }),
            "entity" => self.entity(params),
            "entity.find" => self.find(params),
            "entity.count" => self.count(params),
            "entity.create" => self.create(params),
            "entity.update" => self.update(params),
            "entity.delete" => self.delete(params),
            _ => Err(ApiError::new(
                200,
                "invalid_argument",
                format!(
                    "unknown endpoint /{name}; the demo upstream serves /entity, /entity.find, \
                     /entity.count, /entity.create, /entity.update, /entity.delete and the token \
                     endpoints /oauth/token, /access/getAccessToken, /access/getAuthorizationCode"
                ),
                None,
            )),
        };
        result.unwrap_or_else(|e| e.to_json())
    }

    /// The uuid of the record a selector names.
    fn select_uuid(&self, params: &Params) -> ApiResult<String> {
        check_type_name(params)?;
        let id = self.select(params)?;
        Ok(self
            .record(id)?
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    fn select(&self, params: &Params) -> ApiResult<i64> {
        let id = params.get("id");
        let uuid = params.get("uuid");
        let key_attribute = params.get("key_attribute");
        let key_value = params.get("key_value");
        let mut given = Vec::new();
        if id.is_some() {
            given.push("id");
        }
        if uuid.is_some() {
            given.push("uuid");
        }
        if key_attribute.is_some() || key_value.is_some() {
            given.push("key_attribute");
        }
        if let [first, second, ..] = given.as_slice() {
            return Err(ApiError::duplicate(second, first));
        }

        if let Some(raw) = id {
            let id = raw
                .trim()
                .trim_matches('"')
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("id", "id is not a valid id"))?;
            return if self.records.contains_key(&id) {
                Ok(id)
            } else {
                Err(ApiError::not_found(format!("record with id {id}")))
            };
        }
        if let Some(raw) = uuid {
            let uuid = raw.trim().trim_matches('"');
            return self
                .by_uuid
                .get(uuid)
                .copied()
                .ok_or_else(|| ApiError::not_found(format!("record with uuid {uuid}")));
        }
        let attr = key_attribute.ok_or_else(|| match key_value {
            Some(_) => ApiError::missing("key_attribute"),
            None => ApiError::missing("uuid"),
        })?;
        let raw_value = key_value.ok_or_else(|| ApiError::missing("key_value"))?;
        let path = match scalar_path(attr, true) {
            Ok(path) => path,
            Err(PathProblem::Unknown) => {
                return Err(ApiError::unknown_attribute(attr, "key_attribute"))
            }
            Err(PathProblem::Invalid(reason)) => {
                return Err(ApiError::invalid("key_attribute", reason))
            }
        };
        let wanted: Value = serde_json::from_str(raw_value).map_err(|_| {
            ApiError::invalid(
                "key_value",
                "the JSON is not syntactically valid (strings must be quoted)",
            )
        })?;
        // A linear scan: key attributes are arbitrary paths and an index per
        // path is not worth it at demo sizes.
        self.records
            .iter()
            .find(|(_, rec)| any_value(rec, &path, &mut |v| *v == wanted))
            .map(|(id, _)| *id)
            .ok_or_else(|| ApiError::not_found(format!("record with {attr} = {raw_value}")))
    }

    fn record(&self, id: i64) -> ApiResult<&Value> {
        self.records
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("record with id {id}")))
    }

    fn entity(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let id = self.select(params)?;
        let record = self.record(id)?;
        let result = if let Some(raw) = params.get("attribute_name") {
            let (segs, _) = attribute_path(raw, "attribute_name")?;
            get_at(record, &segs)?.clone()
        } else if let Some(paths) = parse_projection(params)? {
            project(record, &paths)
        } else {
            record.clone()
        };
        Ok(json!({ "result": result, "stat": "ok" }))
    }

    fn matching(&self, params: &Params) -> ApiResult<Vec<&Value>> {
        let filter = parse_filter_param(params)?;
        Ok(self
            .records
            .values()
            .filter(|r| match &filter {
                Some(f) => f.matches(r),
                None => true,
            })
            .collect())
    }

    fn find(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let sort = parse_sort(params)?;
        let projection = parse_projection(params)?;
        let max_results = parse_positive_param(params, "max_results")?
            .unwrap_or(DEFAULT_MAX_RESULTS)
            .min(MAX_RESULTS_CAP);
        let first_result = parse_positive_param(params, "first_result")?.unwrap_or(1);
        let show_total = parse_bool_param(params, "show_total_count")?;
        let mut matched = self.matching(params)?;
        if !sort.is_empty() {
            // Keys are looked up once per record rather than once per comparison.
            let mut keyed: Vec<(Vec<&Value>, &Value)> = matched
                .into_iter()
                .map(|r| (sort.iter().map(|(p, _)| get_plain(r, p)).collect(), r))
                .collect();
            // Stable, so ties keep id order.
            keyed.sort_by(|(a, _), (b, _)| {
                a.iter()
                    .zip(b.iter())
                    .zip(sort.iter())
                    .map(|((x, y), (_, desc))| {
                        let o = cmp_values(x, y);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    })
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
            matched = keyed.into_iter().map(|(_, r)| r).collect();
        }
        let total = matched.len();
        let results: Vec<Value> = matched
            .into_iter()
            .skip(first_result - 1)
            .take(max_results)
            .map(|r| match &projection {
                Some(paths) => project(r, paths),
                None => r.clone(),
            })
            .collect();
        let mut out = Map::new();
        out.insert("result_count".into(), results.len().into());
        out.insert("results".into(), Value::Array(results));
        if show_total {
            out.insert("total_count".into(), total.into());
        }
        out.insert("stat".into(), "ok".into());
        Ok(Value::Object(out))
    }

    fn count(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let total = self.matching(params)?.len();
        Ok(json!({ "total_count": total, "stat": "ok" }))
    }

    fn create(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let include_record = parse_bool_param(params, "include_record")?;
        let attributes = parse_json_param(params, "attributes")?
            .ok_or_else(|| ApiError::missing("attributes"))?;
        let Value::Object(given) = &attributes else {
            return Err(ApiError::invalid("attributes", "expected a JSON object"));
        };
        reject_reserved(given, true)?;
        let mut ctx = WriteCtx {
            next_element_id: self.next_element_id,
            creating: true,
        };
        let mut map = default_object(USER);
        apply_fields(USER, &mut map, given, "", &mut ctx)?;

        let id = self.next_id;
        let mut uuid = self.rng.uuid();
        while self.by_uuid.contains_key(&uuid) {
            uuid = self.rng.uuid();
        }
        let now = now_ts();
        map.insert("id".into(), id.into());
        map.insert("uuid".into(), uuid.clone().into());
        map.insert("created".into(), now.clone().into());
        map.insert("lastUpdated".into(), now.into());
        let record = Value::Object(map);

        self.next_id += 1;
        self.next_element_id = ctx.next_element_id;
        let mut out = Map::new();
        out.insert("id".into(), id.into());
        out.insert("uuid".into(), uuid.into());
        if include_record {
            out.insert("result".into(), record.clone());
        }
        out.insert("stat".into(), "ok".into());
        self.insert(id, record);
        Ok(Value::Object(out))
    }

    fn update(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let include_record = parse_bool_param(params, "include_record")?;
        let id = self.select(params)?;
        // Work on a copy so a failure halfway through leaves the record untouched.
        let mut record = self.record(id)?.clone();
        let mut ctx = WriteCtx {
            next_element_id: self.next_element_id,
            creating: false,
        };
        if let Some(attributes) = parse_json_param(params, "attributes")? {
            let Value::Object(given) = &attributes else {
                return Err(ApiError::invalid("attributes", "expected a JSON object"));
            };
            reject_reserved(given, false)?;
            if let Value::Object(map) = &mut record {
                apply_fields(USER, map, given, "", &mut ctx)?;
            }
        } else if let Some(raw_name) = params.get("attribute_name") {
            let value =
                parse_json_param(params, "value")?.ok_or_else(|| ApiError::missing("value"))?;
            let (segs, kind) = attribute_path(raw_name, "attribute_name")?;
            reject_reserved_path(&segs)?;
            let path = path_text(&segs);
            let target = get_at_mut(&mut record, &segs)?;
            match (segs.last().and_then(|s| s.elem), kind) {
                (Some(elem), Kind::Plural(fields)) => {
                    let Value::Object(given) = &value else {
                        return Err(ApiError::json_type(&path, "an object", "value"));
                    };
                    if given.get("id").is_some_and(|v| v.as_i64() != Some(elem)) {
                        return Err(ApiError::invalid(
                            "value",
                            "element id does not match attribute_name",
                        ));
                    }
                    *target = build_element(fields, elem, given, &path, &mut ctx)?;
                }
                _ => apply(kind, target, &value, &path, &mut ctx)?,
            }
        } else {
            return Err(ApiError::missing("attributes"));
        }
        touch(&mut record);
        self.next_element_id = ctx.next_element_id;
        let out = if include_record {
            json!({ "result": record.clone(), "stat": "ok" })
        } else {
            json!({ "stat": "ok" })
        };
        self.records.insert(id, record);
        Ok(out)
    }

    fn delete(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let id = self.select(params)?;
        let Some(raw_name) = params.get("attribute_name") else {
            if let Some(record) = self.records.remove(&id) {
                if let Some(uuid) = record.get("uuid").and_then(Value::as_str) {
                    self.by_uuid.remove(uuid);
                }
            }
            return Ok(json!({ "stat": "ok" }));
        };
        let (segs, kind) = attribute_path(raw_name, "attribute_name")?;
        reject_reserved_path(&segs)?;
        let mut record = self.record(id)?.clone();
        match segs.split_last() {
            Some((
                Seg {
                    name,
                    elem: Some(elem),
                },
                parents,
            )) => {
                let elem = *elem;
                let mut container_path = parents.to_vec();
                container_path.push(Seg {
                    name: name.clone(),
                    elem: None,
                });
                let container = get_at_mut(&mut record, &container_path)?;
                let items = container.as_array_mut().ok_or_else(|| {
                    ApiError::invalid("attribute_name", format!("{name} is not a plural"))
                })?;
                let pos = items
                    .iter()
                    .position(|it| element_id(it) == Some(elem))
                    .ok_or_else(|| {
                        ApiError::not_found(format!("plural element {}", path_text(&segs)))
                    })?;
                items.remove(pos);
            }
            _ => *get_at_mut(&mut record, &segs)? = default_value(kind),
        }
        touch(&mut record);
        self.records.insert(id, record);
        Ok(json!({ "stat": "ok" }))
    }
}

fn reject_reserved_path(segs: &[Seg]) -> ApiResult<()> {
    match segs.first() {
        Some(first) if RESERVED.contains(&first.name.as_str()) => {
            Err(ApiError::reserved(&first.name, "attribute_name"))
        }
        _ => Ok(()),
    }
}

fn touch(record: &mut Value) {
    if let Some(slot) = record.get_mut("lastUpdated") {
        *slot = Value::from(now_ts());
    }
}
