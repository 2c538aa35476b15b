#!/usr/bin/env python3
"""Writes sigv4_botocore.json: requests signed by botocore, the AWS SDK for Python.

kiln's SigV4 verifier is written by hand, so its tests need signatures made by an
independent, known-good implementation. This script builds real Image Builder requests with a
botocore client (the same serializer and signer `aws imagebuilder` and boto3 use), captures them
just before they would be sent, and records each one with the credentials and clock that signed
it. Regenerate with:

    pip install botocore
    python3 crates/kiln-api/tests/data/gen_sigv4_fixtures.py > crates/kiln-api/tests/data/sigv4_botocore.json
"""
import datetime
import json
import sys

import botocore
import botocore.auth
import botocore.awsrequest
import botocore.session
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.credentials import Credentials

NOW = datetime.datetime(2024, 3, 31, 0, 30, 5)  # the night Europe moves to summer time
botocore.auth.get_current_datetime = lambda remove_tzinfo=True: NOW

ACCESS_KEY = "AKIAKILNEXAMPLE00001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-3"
ENDPOINT = "http://127.0.0.1:8080"
IMAGE = "arn:aws:imagebuilder:eu-west-3:123456789012:image/web server/1.0.0/1"

captured = []


class Captured(Exception):
    pass


def capture(request, **_):
    captured.append(request)
    raise Captured()


def client(token=None):
    session = botocore.session.get_session()
    c = session.create_client(
        "imagebuilder",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
    )
    c.meta.events.register("before-send", capture)
    return c


def record(name, call, token=None):
    c = client(token)
    try:
        call(c)
    except Captured:
        pass
    req = captured.pop()
    body = req.body or b""
    if isinstance(body, str):
        body = body.encode()
    return {
        "name": name,
        "method": req.method,
        "url": req.url,
        "headers": [[k, v.decode() if isinstance(v, bytes) else v] for k, v in req.headers.items()],
        "body": body.decode(),
    }


cases = [
    record("GetImage (query string, ARN with a space)", lambda c: c.get_image(imageBuildVersionArn=IMAGE)),
    record(
        "CreateComponent (JSON body)",
        lambda c: c.create_component(
            name="hello",
            semanticVersion="1.0.0",
            platform="Linux",
            data="name: hello\nschemaVersion: 1.0\nphases: []\n",
            clientToken="token-1",
        ),
    ),
    record("ListImages (POST, JSON body)", lambda c: c.list_images(owner="Self", maxResults=5)),
    record("TagResource (ARN in the path)", lambda c: c.tag_resource(resourceArn=IMAGE, tags={"team": "platform"})),
    record(
        "UntagResource (repeated query key)",
        lambda c: c.untag_resource(resourceArn=IMAGE, tagKeys=["b key", "a+key", "é"]),
    ),
    record(
        "DeleteComponent (session token)",
        lambda c: c.delete_component(
            componentBuildVersionArn="arn:aws:imagebuilder:eu-west-3:123456789012:component/hello/1.0.0/1"
        ),
        token="FQoGZXIvYXdzEXAMPLESESSIONTOKEN//+=",
    ),
]

# A presigned URL (query-string form), as `generate_presigned_url` makes it.
c = client()
url = c.generate_presigned_url("get_image", Params={"imageBuildVersionArn": IMAGE}, ExpiresIn=300)
cases.append({"name": "GetImage presigned", "method": "GET", "url": url, "headers": [], "body": ""})

# Whitespace in header values and repeated headers, signed by the low-level signer directly.
req = botocore.awsrequest.AWSRequest(
    method="POST",
    url=ENDPOINT + "/ListComponents",
    data=b'{"owner":"Self"}',
    headers={"Content-Type": "application/x-amz-json-1.1", "X-Kiln-Note": "  several   spaces\there  "},
)
SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "imagebuilder", REGION).add_auth(req)
cases.append(
    {
        "name": "ListComponents (whitespace in a header value)",
        "method": "POST",
        "url": req.url,
        "headers": [[k, v] for k, v in req.headers.items()],
        "body": req.body.decode(),
    }
)

# Canonicalisation edge cases, signed by the low-level signer: dot and empty path segments,
# unreserved characters, an encoded UTF-8 path, repeated and valueless query parameters.
for name, url in [
    ("path normalisation (dot and empty segments)", ENDPOINT + "/a/./b/../c//GetImage/"),
    ("unreserved characters", ENDPOINT + "/-._~0-9A-Za-z?k-._~=v-._~&z=%2F%3A"),
    ("encoded UTF-8 path", ENDPOINT + "/%E1%88%B4/%20x"),
    ("query order, repeats, empty values", ENDPOINT + "/ListImages?b=2&a=2&a=1&empty=&flag"),
]:
    req = botocore.awsrequest.AWSRequest(method="GET", url=url, headers={})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "imagebuilder", REGION).add_auth(req)
    cases.append(
        {
            "name": name,
            "method": "GET",
            "url": req.url,
            "headers": [[k, v] for k, v in req.headers.items()],
            "body": "",
        }
    )

json.dump(
    {
        "generator": "botocore " + botocore.__version__,
        "accessKeyId": ACCESS_KEY,
        "secretAccessKey": SECRET_KEY,
        "region": REGION,
        "service": "imagebuilder",
        "now": NOW.strftime("%Y%m%dT%H%M%SZ"),
        "cases": cases,
    },
    sys.stdout,
    indent=2,
    ensure_ascii=False,
)
print()
