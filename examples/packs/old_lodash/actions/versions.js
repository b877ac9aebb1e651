const _ = require("lodash");

exports.run = ({ greeting = "hello" }) => ({
  greeting: _.upperFirst(greeting),
  node: process.versions.node,
  lodash: _.VERSION,
});
