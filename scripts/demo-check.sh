#!/usr/bin/env bash
# Runs the README's first command (scripts/demo.sh) as a newcomer would,
# waits until the demo answers, makes the README walk-through's calls and
# checks the decision each one shows, stops the demo, and checks that the
# checkout is still clean. CI runs it on a clean clone (.ci/run).
#
# Uses the demo's fixed ports (8080, 8443, 8090, 9091); every wait is bounded and
# only the processes this script started are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq curl; }

before=$(git status --porcelain)
log=$(mktemp)
# Its own process group, so stopping it stops the gateway and the sample API.
setsid scripts/demo.sh >"$log" 2>&1 &
demo=$!
stop() {
  kill -TERM -- -"$demo" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 -- -"$demo" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -"$demo" 2>/dev/null || true
}
trap 'stop; rm -f "$log"' EXIT

fail() {
  echo "demo check failed: $*" >&2
  echo "--- demo log (last 40 lines)" >&2
  tail -40 "$log" >&2
  exit 1
}

# The first build of Pingora takes minutes: wait up to 20 minutes for the
# gateway to answer a call that needs the sample API behind it.
ready=""
for _ in $(seq 1 1200); do
  kill -0 "$demo" 2>/dev/null || fail "scripts/demo.sh exited"
  if [ "$(curl -s -o /dev/null -w '%{http_code}' -u demo-owner:owner-secret \
        localhost:8080/entity.count -d type_name=user 2>/dev/null)" = 200 ]; then
    ready=yes
    break
  fi
  sleep 1
done
[ -n "$ready" ] || fail "the demo did not answer within 20 minutes"

# call NAME EXPECTED_STATUS PYTHON_CHECK CURL_ARGS...: the check is a Python
# expression over `b` (the JSON body).
call() {
  local name=$1 want=$2 check=$3
  shift 3
  local body status
  body=$(curl -s -w '\n%{http_code}' "$@") || fail "$name: curl failed"
  status=${body##*$'\n'}
  body=${body%$'\n'*}
  [ "$status" = "$want" ] || fail "$name: HTTP $status, expected $want: $body"
  BODY="$body" python3 -c "
import json, os, sys
b = json.loads(os.environ['BODY'])
sys.exit(0 if ($check) else 1)" || fail "$name: unexpected body: $body"
  echo "ok: $name"
}

owner=(-u demo-owner:owner-secret)
partner=(-u partner-readonly:partner-secret)
writer=(-u crm-writer:writer-secret)

call "owner sees the whole record" 200 "'riskScore' in b['result']['internal']" \
  "${owner[@]}" localhost:8080/entity -d type_name=user -d id=1
call "partner sees only its attributes" 200 \
  "'givenName' in b['result'] and 'email' not in b['result'] and 'internal' not in b['result']" \
  "${partner[@]}" localhost:8080/entity -d type_name=user -d id=1
call "the same call over TLS, trusting the demo's own certificate" 200 \
  "'givenName' in b['result'] and 'email' not in b['result'] and 'internal' not in b['result']" \
  "${partner[@]}" --cacert target/demo-state/tls/demo.crt https://localhost:8443/entity -d type_name=user -d id=1
call "the same call over HTTP/2 (ALPN h2) and TLS" 200 \
  "'givenName' in b['result'] and 'email' not in b['result']" \
  --http2 "${partner[@]}" --cacert target/demo-state/tls/demo.crt https://localhost:8443/entity -d type_name=user -d id=1
call "partner's find is cut per record" 200 \
  "len(b['results']) == 3 and all('email' not in r for r in b['results'])" \
  "${partner[@]}" localhost:8080/entity.find -d type_name=user -d max_results=3
call "a sub-attribute call is filtered relative to it" 200 \
  "set(b['result']) <= {'city'}" \
  "${partner[@]}" localhost:8080/entity -d type_name=user -d id=1 -d attribute_name=primaryAddress
call "a probe of a hidden attribute is refused" 403 "b['argument_name'] == 'filter'" \
  "${partner[@]}" localhost:8080/entity.find -d type_name=user --data-urlencode "filter=email = 'a@b.c'"
call "a reject-mode write outside the schema is refused" 403 "'email' in b['error_description']" \
  "${writer[@]}" localhost:8080/entity.update -d type_name=user -d id=1 \
  --data-urlencode 'attributes={"givenName":"Ann","email":"ann@example.com"}'
call "an allowed write goes through" 200 "b['stat'] == 'ok'" \
  "${writer[@]}" localhost:8080/entity.update -d type_name=user -d id=1 \
  --data-urlencode 'attributes={"givenName":"Ann"}'
call "a reserved attribute is never written" 400 "b['code'] == 234" \
  "${writer[@]}" localhost:8080/entity.update -d type_name=user -d id=1 \
  --data-urlencode 'attributes={"uuid":"x"}'
call "a wrong secret is refused" 401 "b['code'] == 402" \
  -u partner-readonly:nope localhost:8080/entity -d type_name=user -d id=1
call "a call from outside the allow-list is refused" 403 "b['error'] == 'client_permission_error'" \
  -u partner-offsite:offsite-secret localhost:8080/entity -d type_name=user -d id=1
call "a client without the feature is refused" 403 "b['error'] == 'client_permission_error'" \
  -u login-app:login-secret localhost:8080/entity -d type_name=user -d id=1
call "IPv6 works the same way" 200 "'email' not in b['result']" \
  -g "${partner[@]}" 'http://[::1]:8080/entity?type_name=user&id=2'
call "the owner changes the partner's read schema" 200 "b['stat'] == 'ok'" \
  "${owner[@]}" localhost:8080/entityType.setAccessSchema -d type_name=user \
  -d for_client_id=partner-readonly -d access_type=read \
  --data-urlencode 'attributes=["givenName","primaryAddress.zip"]'
call "the next call sees the new schema" 200 \
  "'zip' in b['result']['primaryAddress'] and 'familyName' not in b['result']" \
  "${partner[@]}" localhost:8080/entity -d type_name=user -d id=1
call "the CONNECT Roles API answers" 200 "isinstance(b, (list, dict))" \
  "${owner[@]}" localhost:8080/api/v1/Tenants/demo-tenant/Clients/partner-readonly/Roles
# A mobile sign-in: the owner gets a code for the app's user, the app
# exchanges it for a token, the user's calls carry the token.
field() { python3 -c "import json,sys; print(json.load(sys.stdin).get('$1',''))"; }
code=$(curl -s "${owner[@]}" localhost:8080/access/getAuthorizationCode -d type_name=user -d id=1 \
  -d for_client_id=mobile-app -d redirect_uri=https://app.example/cb | field authorizationCode)
[ -n "$code" ] || fail "no authorization code"
answer=$(curl -s -u mobile-app:mobile-secret localhost:8080/oauth/token -d grant_type=authorization_code \
  -d code="$code" -d redirect_uri=https://app.example/cb)
BODY="$answer" python3 -c "
import json, os, sys
b = json.loads(os.environ['BODY'])
sys.exit(0 if 'access_token' in b and 'capture_user' not in b else 1)" \
  || fail "the code exchange: $(echo "$answer" | head -c 200)"
echo "ok: the app exchanges the code for a token; the answer carries no user record"
token=$(field access_token <<<"$answer")
call "the user's token reads only the user's record, cut to read_with_token" 200 \
  "'givenName' in b['result'] and 'internal' not in b['result'] and 'birthday' not in b['result']" \
  -H "Authorization: OAuth $token" localhost:8080/entity -d type_name=user
call "an unknown token is refused" 401 "b['code'] == 414" \
  -H "Authorization: OAuth not-a-token" localhost:8080/entity -d type_name=user
call "the operator listener shows the policy" 200 "b['policy']['clients'] == 6" \
  localhost:9091/status
curl -s localhost:9091/metrics | grep -q '^recordgate_requests_total{.*decision="schema"\|^recordgate_requests_total{.*decision="oracle"' \
  || fail "no denial in /metrics"
echo "ok: metrics show the denials"

stop
trap 'rm -f "$log"' EXIT
if [ "$(git status --porcelain)" != "$before" ]; then
  git status --porcelain >&2
  fail "the walk-through changed the checkout"
fi
echo "demo check passed: the README's first command works and the walk-through shows what it says"
