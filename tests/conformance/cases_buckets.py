"""Service and bucket cases (pass-through mode): ListBuckets, Create/Head/DeleteBucket, location,
versioning and ACL."""

from __future__ import annotations

from tests.conformance.harness import Side, case

RGW_NO_LOCATION = {"rgw": ("Location",)}  # Ceph 16 sends no Location header for CreateBucket
#: The proxy answers GetBucketLocation with its own signing region ([server] region): clients such as minio-py
#: sign for the region they are told, so RGW's zonegroup name ("default") would make their requests fail.
PROXY_REGION = {"rgw": ("LocationConstraint",)}
PROXY_REGION_WHY = {"rgw": "RGW names its zonegroup; the proxy answers its own signing region"}


def _own_buckets(side: Side, label: str) -> None:
    """ListBuckets, restricted to this side's buckets (the upstream holds every other case's too)."""
    listed = side.call(label, "list_buckets", keep=())
    if listed is not None:
        mine = set(side.buckets.values())
        side.note(label + " (this case's buckets)", sorted(b["Name"] for b in listed["Buckets"] if b["Name"] in mine))


@case("ListBuckets", "CreateBucket", buckets=("a", "new1", "new2"))
def case_list_buckets_after_create(side: Side) -> None:
    _own_buckets(side, "list before")
    side.call("create new1", "create_bucket", Bucket=side.bucket("new1"), ignore=RGW_NO_LOCATION)
    side.call("create new2", "create_bucket", Bucket=side.bucket("new2"), ignore=RGW_NO_LOCATION)
    _own_buckets(side, "list after")


@case("CreateBucket", buckets=("new",))
def case_create_bucket_twice(side: Side) -> None:
    side.call("create", "create_bucket", Bucket=side.bucket("new"), ignore=RGW_NO_LOCATION)
    side.call("create again", "create_bucket", Bucket=side.bucket("new"), ignore=RGW_NO_LOCATION)
    side.call("create in eu-west-1 again", "create_bucket", Bucket=side.bucket("new"),
              CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})


@case("CreateBucket", buckets=("new",))
def case_create_bucket_invalid_names(side: Side) -> None:
    side.raw("upper case and underscore", "PUT", "Bad_Bucket_Name")
    side.raw("too short", "PUT", "ab")
    side.raw("malformed configuration", "PUT", side.bucket("new"), body=b"<CreateBucketConfiguration><oops",
             headers={"content-type": "application/xml"},
             unless={"moto": "moto answers a malformed CreateBucketConfiguration with a 500 HTML page",
                     "rgw": "Ceph 16 answers InvalidArgument (S3: MalformedXML)"})


@case("HeadBucket", buckets=("a", "new"))
def case_head_bucket(side: Side) -> None:
    side.call("existing", "head_bucket", Bucket=side.bucket("a"),
              ignore={"rgw": ("BucketRegion",)})  # Ceph 16 sends no x-amz-bucket-region
    side.call("missing", "head_bucket", Bucket=side.bucket("new"))


@case("GetBucketLocation", "GetBucketVersioning", "GetBucketAcl", buckets=("a", "new"))
def case_bucket_location_versioning_acl(side: Side) -> None:
    side.call("location", "get_bucket_location", Bucket=side.bucket("a"), ignore=PROXY_REGION)
    side.call("versioning", "get_bucket_versioning", Bucket=side.bucket("a"))
    acl = side.call("acl", "get_bucket_acl", Bucket=side.bucket("a"))
    if acl is not None:
        side.note("acl permissions", sorted(grant["Permission"] for grant in acl["Grants"]))
    side.call("location of a missing bucket", "get_bucket_location", Bucket=side.bucket("new"))
    side.call("acl of a missing bucket", "get_bucket_acl", Bucket=side.bucket("new"))
    side.raw("location as XML", "GET", side.bucket("a"), query="location", fields=("LocationConstraint",),
             unless=PROXY_REGION_WHY)


@case("DeleteBucket", "PutObject", "DeleteObject", buckets=("a", "new"))
def case_delete_bucket(side: Side) -> None:
    side.call("put", "put_object", Bucket=side.bucket("a"), Key="k", Body=b"x")
    side.call("delete non-empty", "delete_bucket", Bucket=side.bucket("a"))
    side.call("delete object", "delete_object", Bucket=side.bucket("a"), Key="k")
    side.call("delete empty", "delete_bucket", Bucket=side.bucket("a"))
    side.call("head deleted", "head_bucket", Bucket=side.bucket("a"))
    side.call("delete missing", "delete_bucket", Bucket=side.bucket("new"))
