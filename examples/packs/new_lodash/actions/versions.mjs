import _ from "lodash";
import semver from "semver";
import { getSecret } from "attune_action";

export async function run({ greeting = "hello" }) {
  return {
    greeting: _.upperFirst(greeting),
    node: process.versions.node,
    lodash: _.VERSION,
    node_is_20_or_later: semver.gte(process.versions.node, "20.0.0"),
    has_token: getSecret("token") !== null,
  };
}
