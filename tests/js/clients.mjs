// The AWS SDK for JavaScript v3 through the proxy, with its default settings (tests/test_real_clients.py
// runs it and checks the bytes in the real bucket). Prints one JSON object of what each call saw.
import { createHash } from "node:crypto";
import { createReadStream, readFileSync } from "node:fs";
import {
  CopyObjectCommand, DeleteObjectCommand, DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand,
  ListObjectsV2Command, PutObjectCommand, S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";

const env = process.env;
const bucket = env.BG_BUCKET;
const prefix = env.BG_PREFIX;
const s3 = new S3Client({
  endpoint: env.BG_ENDPOINT,
  region: "us-east-1",
  credentials: { accessKeyId: env.BG_KEY, secretAccessKey: env.BG_SECRET },
  maxAttempts: 1,
});

const bytes = async (body) => Buffer.from(await body.transformToByteArray());
const sha256 = (buffer) => createHash("sha256").update(buffer).digest("hex");
const out = {};

await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}small.jpg`, Body: readFileSync(env.BG_SMALL) }));
const upload = new Upload({ client: s3, params: { Bucket: bucket, Key: `${prefix}big.mp4`,
                                                  Body: createReadStream(env.BG_BIG) } });
let parts = 0;
upload.on("httpUploadProgress", () => { parts += 1; });
await upload.done();
out.multipartProgressEvents = parts;

const big = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: `${prefix}big.mp4` }));
out.bigSha256 = sha256(await bytes(big.Body));
const ranged = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: `${prefix}small.jpg`,
                                                    Range: "bytes=100-149" }));
out.rangeHex = (await bytes(ranged.Body)).toString("hex");
out.contentRange = ranged.ContentRange;
const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: `${prefix}small.jpg` }));
out.headLength = head.ContentLength;
out.headETag = head.ETag;
await s3.send(new CopyObjectCommand({ Bucket: bucket, Key: `${prefix}copy.jpg`,
                                      CopySource: `${bucket}/${prefix}small.jpg` }));
await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}gone1`, Body: "1" }));
await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}gone2`, Body: "2" }));
const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
out.listed = (listed.Contents ?? []).map((item) => item.Key);
await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: `${prefix}small.jpg` }));
const deleted = await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: {
  Objects: [{ Key: `${prefix}gone1` }, { Key: `${prefix}gone2` }] } }));
out.multiDeleted = (deleted.Deleted ?? []).map((item) => item.Key).sort();
try {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}test.png`, Body: readFileSync(env.BG_TEST_IMAGE),
                                       ContentType: "image/png" }));
  out.testImage = "stored";
} catch (error) {
  out.testImage = `${error.name} ${error.$metadata?.httpStatusCode}`;
}
console.log(JSON.stringify(out));
