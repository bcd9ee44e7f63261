// surepush.mjs: surepush.js as an ES module.
//
//   import SurePush from "/surepush.mjs";          // or: import { subscribe } from "/surepush.mjs";
//   var sub = SurePush.subscribe("", { topics: ["users/42"], onEvent: function (ev) {} });
//
// The client itself is the classic script next to this file (one source, no build step);
// evaluated as a module it registers itself on `self`, which is exported from here.
import './surepush.js';

var SurePush = self.SurePush;

export default SurePush;
export var subscribe = SurePush.subscribe;
export var Subscription = SurePush.Subscription;
