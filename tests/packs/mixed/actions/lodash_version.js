const fs = require("fs");
const _ = require("lodash");

// Its own image: lodash is there, the Python image's venv is not.
exports.run = () => ({ lodash: _.VERSION, node: process.versions.node, has_venv: fs.existsSync("/opt/attune/venv") });
