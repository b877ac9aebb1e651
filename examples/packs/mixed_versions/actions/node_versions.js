const _ = require("lodash");

exports.run = ({ greeting = "hello" }) => ({ greeting, node: process.versions.node, lodash: _.VERSION });
